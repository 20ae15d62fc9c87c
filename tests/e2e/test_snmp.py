"""
End-to-end: a real snmpd (Debian's) on 127.0.0.1 runs `secmail snmp-pass` as its
pass_persist handler; snmpget returns the real gateway's queue depth, the same figure as
/metrics, and snmpwalk the whole subtree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    Gateway,
    SmtpSink,
    free_port,
    make_message,
    poll,
    run_env,
    running,
    toml_text,
)

SNMPD = shutil.which("snmpd") or ("/usr/sbin/snmpd" if Path("/usr/sbin/snmpd").exists() else None)
SNMPGET = shutil.which("snmpget")
BASE = ".1.3.6.1.4.1.8072.9999.9999.25.1"

pytestmark = pytest.mark.skipif(
    SNMPD is None or SNMPGET is None, reason="snmpd and snmpget (Debian snmpd, snmp) are needed"
)


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def snmp(tool: str, port: int, oid: str) -> str:
    result = subprocess.run(
        [tool, "-v2c", "-c", "public", "-On", "-t", "3", "-r", "1", f"{LOOPBACK}:{port}", oid],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_snmpget_returns_the_queue_depth(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    gw = Gateway(tmp_path / "gateway", internet, internal)
    # Nothing listens where the notifications go: they wait in the queue.
    gw.config["routes"]["outgoing"] = f"smtp://{LOOPBACK}:{free_port()}"
    gw.config_path.write_text(toml_text(gw.config), encoding="utf-8")
    port = free_udp_port()
    conf = tmp_path / "snmpd.conf"
    conf.write_text(
        f"rocommunity public {LOOPBACK}\n"
        f"pass_persist {BASE.rsplit('.', 1)[0]} {sys.executable} -m secmail.cli snmp-pass "
        f"--url http://{LOOPBACK}:{gw.metrics_port}\n",
        encoding="utf-8",
    )
    with running(gw):
        for n in range(3):
            to = f"snmp{n}@partner.example.s"
            message = make_message(
                sender="alice@corp.example", to=to, subject="snmp", message_id=f"<snmp{n}@corp>"
            )
            assert gw.send("alice@corp.example", [to], message) == {}
        snmpd = subprocess.Popen(  # noqa: S603
            [
                str(SNMPD),
                "-f",
                "-Lo",
                "-C",
                "-c",
                str(conf),
                "-p",
                str(tmp_path / "snmpd.pid"),
                f"udp:{LOOPBACK}:{port}",
            ],
            env=run_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            depth = poll(
                lambda: (lambda out: out if out.strip().endswith("Gauge32: 3") else None)(
                    snmp(str(SNMPGET), port, f"{BASE}.4.0")
                ),
                30,
                lambda: snmp(str(SNMPGET), port, f"{BASE}.4.0"),
                step=1.0,
            )
            assert depth.startswith(f"{BASE}.4.0 = Gauge32: 3")
            walk = snmp(shutil.which("snmpwalk") or "snmpwalk", port, BASE)
            lines = walk.strip().splitlines()
            assert [line.split(" = ")[0] for line in lines] == [
                f"{BASE}.{n}.0" for n in range(1, 13)
            ]
            assert f"{BASE}.3.0 = INTEGER: 1" in walk  # ready
            assert f"{BASE}.8.0 = Counter64: 3" in walk  # letters taken in
        finally:
            snmpd.terminate()
            try:
                snmpd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                snmpd.kill()
                snmpd.wait(timeout=10)
