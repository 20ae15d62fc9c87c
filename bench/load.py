#!/usr/bin/env python3
"""
Load benchmark: the secmail gateway's secure-letter path against a private Postfix.

For every (message size, concurrent connections) combination it runs, one after
the other and each on fresh state:

  1. the real gateway (C{twistd -n secmail}) with a fresh data_dir, its outgoing
     route pointing at a counting sink (Postfix's C{smtp-sink}), loaded with N
     messages to the marked recipient C{bob@partner.example.s};
  2. a private Postfix instance (C{postfix -c DIR}, its own queue and data
     directories in a temporary folder, loopback only, a non-25 port) relaying
     everything to the same kind of sink, loaded the same way.

The load generator for both is Postfix's C{smtp-source}; by default each of its
C sessions keeps its connection and sends message after message over it (C{-d}),
as an MTA with connection caching does. Reported per run: accepted messages/s
(N over the wall time of the smtp-source run), the time from the start of the
load until the sink had received every resulting mail (notifications for
secmail, the relayed mail for Postfix), and for secmail the peak RSS (VmHWM) of
the gateway process.

Only loopback addresses are used. Every process started here is stopped in a
C{finally}, and every wait is bounded.

    python3 bench/load.py --quick
    python3 bench/load.py --sizes 2048 --connections 10 --messages 2000 --out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SENDER = "alice@corp.example"
RECIPIENT = "bob@partner.example.s"
LOOPBACK = "127.0.0.1"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

# The unprivileged user the sink runs as (smtp-sink refuses to run as root without -u).
SINK_USER = "nobody"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_greeting(port: int, timeout: float, alive: Any = None) -> None:
    """Until a 220 greeting comes from LOOPBACK:port; raises after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server on port {port} exited before it was ready")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                s.settimeout(5)
                greeting = s.recv(512)
                with contextlib.suppress(OSError):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                if greeting.startswith(b"220"):
                    return
                last = RuntimeError(f"greeting {greeting[:80]!r}")
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"no SMTP greeting on port {port} within {timeout:g} s: {last}")


def stop_process(proc: subprocess.Popen[Any], name: str, grace: float = 15.0) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: only this one process, by its pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) did not stop in {grace:g} s; killing it")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def proc_status(pid: int, key: str) -> int | None:
    """A kB value such as VmHWM from /proc/PID/status, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_pss(pid: int) -> int | None:
    """Proportional set size in kB (shared pages divided among their users), or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


# --- the sink -------------------------------------------------------------------------


class Sink:
    """C{smtp-sink -c}: throws mail away and counts it; the count is read from its output."""

    _COUNT = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._out_path = workdir / f"sink-{self.port}.out"
        self._out = open(self._out_path, "wb")
        self._proc = subprocess.Popen(
            ["smtp-sink", "-u", SINK_USER, "-c", f"{LOOPBACK}:{self.port}", "256"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.base = 0
        try:
            wait_for_greeting(self.port, 10, alive=lambda: self._proc.poll() is None)
        except Exception:
            self.stop()
            raise

    def count(self) -> int:
        """Messages received since C{base} was set (the last C{mesg=} counter it printed)."""
        with open(self._out_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            tail = f.read()
        return max((int(n) for n in self._COUNT.findall(tail)), default=0) - self.base

    def reset(self) -> None:
        """Count from zero again."""
        self.base += self.count()

    def wait_for(self, expected: int, start: float, stall: float, cap: float) -> float | None:
        """
        Seconds from C{start} (a monotonic time) until the sink has C{expected}
        messages; None when it stopped growing for C{stall} s or C{cap} s went by.
        """
        last_count = -1
        last_change = time.monotonic()
        while True:
            now = time.monotonic()
            n = self.count()
            if n >= expected:
                return now - start
            if n != last_count:
                last_count, last_change = n, now
            if now - last_change > stall or now - start > cap:
                log(f"sink: {n} of {expected} arrived; giving up waiting")
                return None
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self._proc, "smtp-sink", grace=5)
        self._out.close()


# --- the load -------------------------------------------------------------------------


@dataclass
class LoadResult:
    seconds: float
    accepted: int
    exit_code: int
    error: str = ""


def run_load(
    port: int, messages: int, size: int, connections: int, reuse: bool, timeout: float
) -> LoadResult:
    """C{smtp-source} against LOOPBACK:port; accepted = the last DATA counter it printed."""
    command = ["smtp-source", "-c"]
    if reuse:
        command.append("-d")
    command += [
        "-s",
        str(connections),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-M",
        "client.corp.example",
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{LOOPBACK}:{port}",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc, "smtp-source", grace=2)
        out, err = proc.communicate(timeout=10)
        seconds = time.monotonic() - started
        return LoadResult(seconds, _last_counter(out), -1, f"timed out after {timeout:g} s")
    seconds = time.monotonic() - started
    error = err.decode("utf-8", "replace").strip()
    return LoadResult(seconds, _last_counter(out), proc.returncode, error[-500:])


def _last_counter(out: bytes) -> int:
    numbers = re.findall(rb"(\d+)", out)
    return int(numbers[-1]) if numbers else 0


# --- secmail --------------------------------------------------------------------------


def twistd_command() -> list[str]:
    twistd = shutil.which("twistd")
    return [twistd] if twistd else [sys.executable, "-m", "twisted"]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    import psycopg

    name = f"secmail_bench_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_stored(database: str) -> int | None:
    """Original (kind 'mail') messages in the gateway's store after the run."""
    sql = "SELECT COUNT(*) FROM messages WHERE kind = 'mail'"
    try:
        if database.startswith("sqlite:"):
            conn = sqlite3.connect(database[len("sqlite:") :], timeout=10)
            try:
                return int(conn.execute(sql).fetchone()[0])
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(database, connect_timeout=10) as pg:
            row = pg.execute(sql).fetchone()
            return int(row[0]) if row else None
    except Exception as e:
        log(f"cannot count stored messages: {e}")
        return None


def secmail_config(
    workdir: Path, port: int, portal: int, sink_port: int, database: str, connections: int
) -> str:
    data_dir = workdir / "data"
    return f"""\
[gateway]
hostname = "localhost"
data_dir = "{data_dir}"
bounce_address = "secmail-bounces@localhost"
notification_from = "secmail@localhost"

[smtp]
listen = ["tcp:{port}:interface={LOOPBACK}"]
accepted_networks = ["127.0.0.0/8"]
max_connections_per_client = {max(50, connections + 5)}

[routes]
outgoing = "smtp://{LOOPBACK}:{sink_port}"
incoming = "smtp://{LOOPBACK}:{sink_port}"
incoming_domains = ["corp.example"]

[secure]
mode = "marked"

[portal]
listen = ["tcp:{portal}:interface={LOOPBACK}"]
url = "https://localhost:{portal}"

[store]
database = "{database}"
"""


@dataclass
class RunResult:
    system: str
    size: int
    connections: int
    messages: int
    accepted: int = 0
    load_seconds: float = 0.0
    msgs_per_s: float = 0.0
    delivered: int = 0
    all_delivered_seconds: float | None = None
    #: secmail: VmHWM of the gateway process. Postfix: not measured (many short processes).
    peak_rss_kb: int | None = None
    #: Proportional set size at the end of the load (Postfix: summed over its processes,
    #: so shared libraries are counted once), for a rough memory comparison.
    pss_kb: int | None = None
    cpu_seconds: float | None = None
    #: Messages sent (and waited for) before the measured load; not counted above.
    warmup: int = 0
    stored: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)


def run_secmail(
    messages: int,
    size: int,
    connections: int,
    database_kind: str,
    reuse: bool,
    keep: bool,
    warmup: int = 0,
    profile: str | None = None,
    py_spy: str | None = None,
) -> RunResult:
    result = RunResult("secmail", size, connections, messages)
    workdir = Path(tempfile.mkdtemp(prefix="secmail-bench-"))
    os.chmod(workdir, 0o755)
    gateway: subprocess.Popen[Any] | None = None
    sink: Sink | None = None
    logfile = workdir / "twistd.log"
    try:
        with contextlib.ExitStack() as stack:
            if database_kind == "postgresql":
                database = stack.enter_context(postgres_database())
            else:
                database = f"sqlite:{workdir / 'data' / 'secmail.sqlite'}"
            sink = Sink(workdir)
            port, portal = free_port(), free_port()
            config = workdir / "secmail.toml"
            config.write_text(
                secmail_config(workdir, port, portal, sink.port, database, connections)
            )
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO) + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            command = twistd_command() + [
                "-n",
                "--pidfile=",
                f"--logfile={logfile}",
            ]
            if profile:
                command += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
            command += ["secmail", "--config", str(config)]
            gateway = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(workdir / "twistd.stderr", "wb"),
            )
            pid = gateway.pid
            proc = gateway
            wait_for_greeting(port, 60, alive=lambda: proc.poll() is None)
            spies: list[Sampler] = []

            def start_sampling() -> None:
                if py_spy:
                    name = f"{py_spy}-{size}-{connections}"
                    spies.append(stack.enter_context(sampling(pid, name)))

            measure(
                result,
                port,
                sink,
                warmup,
                reuse,
                lambda: proc_cpu_seconds(pid),
                before_load=start_sampling,
            )
            result.peak_rss_kb = proc_status(pid, "VmHWM")
            result.pss_kb = proc_pss(pid)
            for spy in spies:
                spy.close()
            stop_process(gateway, "secmail gateway", grace=30)
            if gateway.returncode not in (0, None, -signal.SIGTERM):
                result.notes.append(f"gateway exit code {gateway.returncode}")
            result.stored = count_stored(database)
    except Exception as e:
        result.error = (result.error + "; " if result.error else "") + f"{type(e).__name__}: {e}"
    finally:
        if gateway is not None:
            stop_process(gateway, "secmail gateway", grace=30)
        if sink is not None:
            sink.stop()
        if result.error and logfile.exists():
            tail = logfile.read_text(errors="replace").splitlines()[-15:]
            log("secmail log tail:\n  " + "\n  ".join(tail))
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


class Sampler:
    """C{py-spy record} on one process, stopped (and its report written) by close()."""

    def __init__(self, pid: int, output: str) -> None:
        self.output = output
        self._proc = subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "100", "-d", "900"]
            + ["--threads", "-o", output],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach before the load starts

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self._proc, "py-spy", grace=5)
            log(f"py-spy samples in {self.output}")


@contextlib.contextmanager
def sampling(pid: int, prefix: str) -> Iterator[Sampler]:
    sampler = Sampler(pid, prefix + ".txt")
    try:
        yield sampler
    finally:
        sampler.close()


def measure(
    result: RunResult,
    port: int,
    sink: Sink,
    warmup: int,
    reuse: bool,
    cpu: Any,
    before_load: Any = None,
) -> None:
    """
    Warm up with C{warmup} messages (waited for until delivered, not counted),
    then send the measured load and wait until the sink has all of it.
    C{cpu()} gives the system's CPU seconds so far.
    """
    size, connections, messages = result.size, result.connections, result.messages
    if warmup:
        warm = run_load(port, warmup, size, connections, reuse, load_timeout(warmup, size))
        if warm.exit_code != 0 or warm.accepted != warmup:
            raise RuntimeError(f"warm-up failed: {warm.accepted}/{warmup} accepted: {warm.error}")
        if sink.wait_for(warmup, time.monotonic(), stall=30, cap=300) is None:
            raise RuntimeError(f"warm-up: only {sink.count()}/{warmup} reached the sink")
        result.warmup = warmup
        sink.reset()
    if before_load is not None:
        before_load()
    cpu_before = cpu() or 0.0
    start = time.monotonic()
    load = run_load(port, messages, size, connections, reuse, load_timeout(messages, size))
    result.load_seconds = load.seconds
    result.accepted = load.accepted
    result.msgs_per_s = load.accepted / load.seconds if load.seconds > 0 else 0.0
    if load.exit_code != 0:
        result.error = f"smtp-source exit {load.exit_code}: {load.error}"
    result.all_delivered_seconds = sink.wait_for(
        load.accepted, start, stall=30, cap=load.seconds + 600
    )
    result.delivered = sink.count()
    cpu_after = cpu()
    if cpu_after is not None:
        result.cpu_seconds = max(0.0, cpu_after - cpu_before)


def load_timeout(messages: int, size: int) -> float:
    """A generous bound on one smtp-source run (at least 1 ms per message per 2 KB)."""
    return 120 + messages * max(1.0, size / 2048) * 0.01


# --- Postfix --------------------------------------------------------------------------

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{port}      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {dir}
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
relay_transport = smtp
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
master_service_disable =
multi_instance_enable = no
"""


class PrivatePostfix:
    """A Postfix instance of its own in a temporary directory; /etc/postfix is only read."""

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.dir = workdir / "postfix"
        self.dir.mkdir()
        os.chmod(self.dir, 0o755)
        # postfix-script makes the queue's subdirectories, but not these two.
        (self.dir / "queue").mkdir(mode=0o755)
        (self.dir / "data").mkdir(mode=0o700)
        shutil.chown(self.dir / "data", user="postfix")
        self.port = free_port()
        (self.dir / "main.cf").write_text(MAIN_CF.format(dir=self.dir, sink_port=sink_port))
        (self.dir / "master.cf").write_text(MASTER_CF.format(port=f"{LOOPBACK}:{self.port}"))
        self.started = False

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def master_pid(self) -> int | None:
        try:
            return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        done = self.postfix("start")
        self.started = True
        if done.returncode != 0:
            raise RuntimeError(
                f"postfix -c {self.dir} start: exit {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
        wait_for_greeting(self.port, 30)

    def pss_kb(self) -> int | None:
        """The sum of PSS over the master and its children now."""
        master = self.master_pid()
        if master is None:
            return None
        values = [proc_pss(p) for p in [master, *children_of(master)]]
        return sum(v for v in values if v) or None

    def cpu_seconds(self) -> float | None:
        master = self.master_pid()
        if master is None:
            return None
        values = [proc_cpu_seconds(p) for p in [master, *children_of(master)]]
        return sum(v for v in values if v)

    def stop(self) -> None:
        if not self.started:
            return
        master = self.master_pid()
        try:
            done = self.postfix("stop", timeout=60)
            if done.returncode != 0:
                log(f"postfix stop: {(done.stderr or done.stdout).strip()[-300:]}")
        except subprocess.TimeoutExpired:
            log("postfix stop timed out")
        if master is None:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.path.exists(f"/proc/{master}"):
            time.sleep(0.1)
        if os.path.exists(f"/proc/{master}"):
            log(f"Postfix master {master} still running; postfix abort")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.postfix("abort", timeout=30)
            time.sleep(1)
            if os.path.exists(f"/proc/{master}"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGKILL)


def run_postfix(
    messages: int, size: int, connections: int, reuse: bool, keep: bool, warmup: int = 0
) -> RunResult:
    result = RunResult("postfix", size, connections, messages)
    workdir = Path(tempfile.mkdtemp(prefix="postfix-bench-"))
    os.chmod(workdir, 0o755)
    sink: Sink | None = None
    postfix: PrivatePostfix | None = None
    try:
        sink = Sink(workdir)
        postfix = PrivatePostfix(workdir, sink.port)
        postfix.start()
        # CPU of processes that exited during the run is not counted: a lower bound.
        measure(result, postfix.port, sink, warmup, reuse, postfix.cpu_seconds)
        result.pss_kb = postfix.pss_kb()
    except Exception as e:
        result.error = (result.error + "; " if result.error else "") + f"{type(e).__name__}: {e}"
    finally:
        if postfix is not None:
            postfix.stop()
        if sink is not None:
            sink.stop()
        if result.error and postfix is not None and (postfix.dir / "maillog").exists():
            tail = (postfix.dir / "maillog").read_text(errors="replace").splitlines()[-15:]
            log("postfix maillog tail:\n  " + "\n  ".join(tail))
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- the report -----------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}"


def fmt_size(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'size':>7} {'conns':>5} {'N':>5} | {'secmail/s':>9} {'postfix/s':>9} {'ratio':>6} | "
        f"{'secmail':>8} {'postfix':>8} | {'secmail':>8} {'postfix':>8} | "
        f"{'secmail':>9} {'postfix':>9}"
    )
    under = (
        f"{'':>7} {'':>5} {'':>5} | {'accepted':>9} {'accepted':>9} {'':>6} | "
        f"{'peak RSS':>8} {'PSS':>8} | {'CPU/msg':>8} {'CPU/msg':>8} | "
        f"{'all sent':>9} {'all sent':>9}"
    )
    print(header)
    print(under)
    print("-" * len(header))
    for row in rows:
        s, p = row["secmail"], row["postfix"]
        ratio = (
            f"{s['msgs_per_s'] / p['msgs_per_s']:.2f}" if s and p and p["msgs_per_s"] > 0 else "-"
        )
        print(
            f"{fmt_size(row['size']):>7} {row['connections']:>5} {row['messages']:>5} | "
            f"{s['msgs_per_s'] if s else 0:>9.1f} {p['msgs_per_s'] if p else 0:>9.1f} "
            f"{ratio:>6} | {_mib(s, 'peak_rss_kb'):>8} {_mib(p, 'pss_kb'):>8} | "
            f"{_cpu(s):>8} {_cpu(p):>8} | {_delivered(s):>9} {_delivered(p):>9}"
        )
    print(
        "accepted: messages/s over the wall time of the smtp-source run; all sent: seconds from "
        "the start of the load until the sink had every notification (secmail) or relayed mail "
        "(Postfix); CPU/msg: CPU time of the gateway process / of Postfix's processes still "
        "alive at the end (a lower bound) per accepted message."
    )
    for row in rows:
        for system in ("secmail", "postfix"):
            r = row[system]
            if not r:
                continue
            stored_wrong = (
                r.get("stored") is not None and r["stored"] != r["accepted"] + r["warmup"]
            )
            if r["error"] or r["accepted"] != r["messages"] or r["notes"] or stored_wrong:
                print(
                    f"  {system} {fmt_size(row['size'])}/{row['connections']}: accepted "
                    f"{r['accepted']}/{r['messages']}, delivered {r['delivered']}"
                    f"{', stored ' + str(r['stored']) if r.get('stored') is not None else ''}"
                    f"{'; ' + r['error'] if r['error'] else ''}"
                    f"{'; ' + '; '.join(r['notes']) if r['notes'] else ''}"
                )


def _mib(r: dict[str, Any] | None, key: str) -> str:
    return f"{r[key] / 1024:.0f} MiB" if r and r.get(key) else "-"


def _cpu(r: dict[str, Any] | None) -> str:
    if not r or r.get("cpu_seconds") is None or not r["accepted"]:
        return "-"
    return f"{1000 * r['cpu_seconds'] / r['accepted']:.2f} ms"


def _delivered(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    if r["all_delivered_seconds"] is None:
        return f"{r['delivered']}/{r['accepted']}"
    return fmt_seconds(r["all_delivered_seconds"]) + " s"


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers: {text}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=None, help="messages per run (2000)")
    parser.add_argument("--sizes", type=parse_ints, default=None, help="bytes, e.g. 2048,102400")
    parser.add_argument("--connections", type=parse_ints, default=None, help="e.g. 1,10,50")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run: 200 messages, unless given"
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument(
        "--systems",
        default="secmail,postfix",
        help="which systems to run (secmail,postfix)",
    )
    parser.add_argument(
        "--new-connection-per-message",
        action="store_true",
        help="smtp-source without -d: every message on a connection of its own",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run the gateway under twistd's cProfile and save the stats here "
        "(only sensible with one size and one connection count)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PREFIX",
        help="sample the gateway with py-spy during each load; collapsed stacks go to "
        "PREFIX-SIZE-CONNECTIONS.txt",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="messages sent and delivered before each measured load, not counted "
        "(default: a tenth of --messages, at most 200; 0: none)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every combination this many times and report the median run (1)",
    )
    args = parser.parse_args(argv)

    messages = args.messages or (200 if args.quick else 2000)
    sizes = args.sizes or [2048, 102400]
    connections = args.connections or [1, 10, 50]
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not systems <= {"secmail", "postfix"}:
        parser.error("--systems takes secmail and/or postfix")
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            parser.error(f"{tool} is not installed (Debian package postfix)")
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    reuse = not args.new_connection_per_message
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    warmup = args.warmup if args.warmup is not None else min(200, messages // 10)

    rows: list[dict[str, Any]] = []
    started = time.time()
    for size in sizes:
        for conns in connections:
            row: dict[str, Any] = {
                "size": size,
                "connections": conns,
                "messages": messages,
                "secmail": None,
                "postfix": None,
            }
            runs: dict[str, list[dict[str, Any]]] = {"secmail": [], "postfix": []}
            for attempt in range(args.repeat):
                what = f"{messages} x {size} B over {conns} connection(s)"
                if args.repeat > 1:
                    what += f", run {attempt + 1} of {args.repeat}"
                if "secmail" in systems:
                    log(f"secmail: {what}")
                    r = run_secmail(
                        messages,
                        size,
                        conns,
                        args.database,
                        reuse,
                        args.keep,
                        warmup,
                        args.profile,
                        args.py_spy,
                    )
                    runs["secmail"].append(asdict(r))
                    log(f"  {r.msgs_per_s:.1f} msgs/s, delivered {r.delivered} {r.error}")
                if "postfix" in systems:
                    log(f"postfix: {what}")
                    r = run_postfix(messages, size, conns, reuse, args.keep, warmup)
                    runs["postfix"].append(asdict(r))
                    log(f"  {r.msgs_per_s:.1f} msgs/s, delivered {r.delivered} {r.error}")
            for system, results in runs.items():
                if results:
                    # The median run by accepted rate stands for the combination.
                    ordered = sorted(results, key=lambda x: x["msgs_per_s"])
                    row[system] = ordered[(len(ordered) - 1) // 2]
                    if len(results) > 1:
                        row[system + "_runs"] = results
            rows.append(row)

    print()
    print(
        f"secmail ({args.database}) vs private Postfix; smtp-source "
        f"{'-d (connections reused)' if reuse else '(one connection per message)'}; "
        f"{warmup} warm-up messages per run; "
        f"{os.cpu_count()} CPUs; {time.time() - started:.0f} s in all"
    )
    print_table(rows)
    if args.out:
        report = {
            "database": args.database,
            "reuse_connections": reuse,
            "warmup": warmup,
            "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.out}")
    failed = any(
        r and (r["error"] or r["all_delivered_seconds"] is None)
        for row in rows
        for r in (row["secmail"], row["postfix"])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
