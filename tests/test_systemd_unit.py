"""
etc/systemd/secmail.service: systemd itself checks it (systemd-analyze verify, and the offline
security review), and it keeps the hardening the README promises.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "etc" / "systemd" / "secmail.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def service() -> dict[str, list[str]]:
    """The [Service] section; a key given twice keeps every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def runnable_copy(directory: str) -> str:
    """The unit with ExecStart naming this interpreter's twistd, which exists here."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    assert os.access(twistd, os.X_OK), twistd
    path = os.path.join(directory, "secmail.service")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/secmail/bin/twistd", twistd)
    Path(path).write_text(text, encoding="utf-8")
    return path


def test_runs_twistd_in_the_foreground_as_an_unprivileged_user() -> None:
    s = service()
    assert s["User"] == ["secmail"]
    (start,) = s["ExecStart"]
    assert start.startswith("/opt/secmail/bin/twistd --nodaemon ")
    assert " secmail --config /etc/secmail/secmail.toml" in start
    assert s["Restart"] == ["on-failure"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]


def test_hardening() -> None:
    s = service()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "UMask": "0077",
        "ReadWritePaths": "/var/lib/secmail",
        "StateDirectory": "secmail",
    }.items():
        assert s.get(key) == [value], key


def test_unit_file_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert parser.sections() == ["Unit", "Service", "Install"]


@needs_systemd
def test_systemd_analyze_verify_is_clean() -> None:
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run(
            [ANALYZE or "", "verify", runnable_copy(directory)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd
def test_systemd_security_review_rates_it_ok() -> None:
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run(
            [ANALYZE or "", "security", "--offline=yes", runnable_copy(directory)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    found = re.search(r"Overall exposure level for secmail.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.5, result.stdout
