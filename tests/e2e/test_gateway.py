"""
End-to-end tests of the running gateway: C{twistd -n secmail} as a separate process,
real SMTP servers standing in for the Internet and for the internal mail server, and
the HTTPS portal reached over TLS.

Most tests share one gateway (mode "all", small size limit, quick retries); the crash
test has its own, because it kills it.
"""

from __future__ import annotations

import re
import secrets
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    Gateway,
    SmtpSink,
    make_message,
    poll,
    run_env,
    twistd_path,
)
from tests.e2e.mails import (
    is_notification_sender,
    link_token,
    msgid,
    notification_for,
    text_parts,
    unique,
)

SENDER = "alice@corp.example"

SHARED_SETTINGS: dict[str, dict[str, Any]] = {
    "secure": {"mode": "all"},
    "smtp": {"max_message_size": 20000},
    "queue": {"retry_initial": 1, "retry_max": 2},
}


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"), internet, internal, SHARED_SETTINGS)
    try:
        yield gw.start()
    finally:
        gw.stop()


# --- helpers ---------------------------------------------------------------------------


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """Our Received: field (with its continuation lines) and everything after it."""
    assert data.startswith(b"Received: from "), data[:200]
    pos = data.index(b"\r\n") + 2
    while data[pos : pos + 1] in (b" ", b"\t"):
        pos = data.index(b"\r\n", pos) + 2
    return data[:pos], data[pos:]


# --- the tests -------------------------------------------------------------------------


def test_plain_relay_byte_for_byte(gateway: Gateway, internet: SmtpSink) -> None:
    """Unmarked mail (mode "all") is relayed with only our Received: field added, bytes intact."""
    mid = msgid("plain")
    original = (
        b"From: Alice Sender <alice@corp.example>\r\n"
        b"To: Dave <dave@partner.example>\r\n"
        b"Subject: Plain relay byte for byte\r\n"
        b"Message-ID: " + mid.encode() + b"\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        b"X-Folded: first part\r\n\tsecond part after a tab\r\n  third after spaces\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"First line.\r\n"
        b".A line starting with a dot\r\n"
        b"..and one starting with two\r\n"
        b". a dot and a space\r\n"
        + "Non-ASCII: Hyvää päivää, Grüße, Ελληνικά, 日本語 ✓\r\n".encode()
        + b"   spaces around   \r\n"
        b"\r\n"
        b"\ttab-indented last line\r\n"
    )
    with gateway.smtp() as client:
        refused = client.sendmail(SENDER, ["dave@partner.example"], original)
    assert refused == {}

    got = internet.wait_for_message(lambda m: m.message_id == mid, what=f"the relayed {mid}")
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ("dave@partner.example",)
    received, rest = split_received(got.data)
    assert f"by {gateway.hostname}".encode() in received
    assert rest == original


def test_marked_mail_gets_notification_without_content(
    gateway: Gateway, internet: SmtpSink
) -> None:
    """A .s recipient gets only a link (no subject, no body); the portal shows the message."""
    subject = "Confidential merger plan Zebra4711"
    body_text = "The secret body text Kumquat9931 stays on the gateway."
    recipient = unique("bob")
    message = make_message(
        sender=SENDER,
        to=f"{recipient}@partner.example",
        subject=subject,
        message_id=msgid("marked"),
        body=body_text,
    )
    gateway.send(SENDER, [f"{recipient}@partner.example.s"], message)

    address = f"{recipient}@partner.example"
    notification = internet.wait_for_message(
        notification_for(gateway, address), what=f"the notification to {address}"
    )
    assert notification.header("to") == address
    assert notification.header("reply-to") == SENDER
    everything = [notification.data.decode("utf-8", "replace"), *text_parts(notification)]
    for secret in (subject, "Zebra4711", body_text, "Kumquat9931"):
        for text in everything:
            assert secret not in text, f"{secret!r} leaked into the notification"
    token = link_token(gateway, notification)

    page = gateway.portal_get(f"/m/{token}")
    assert page.status == 200
    html = page.body.decode("utf-8")
    # The landing page names the sender and offers "Open"; it shows no content and sets nothing.
    assert SENDER in html and "Open message" in html
    assert subject not in html and body_text not in html
    assert page.cookies == {}
    # A plain GET consumes nothing (link scanners click first): the link still works.
    assert gateway.portal_get(f"/m/{token}").status == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert csrf is not None
    # "Open" without the form's CSRF token is refused.
    assert gateway.portal_post(f"/m/{token}", {"csrf": "0" * 64}).status == 403
    opened = gateway.portal_post(f"/m/{token}", {"csrf": csrf.group(1)})
    assert opened.status == 303
    assert opened.headers["location"] == "/read"
    assert set(opened.cookies) == {"__Host-secmail-session", "__Host-secmail-browser"}
    reading = gateway.portal_get("/read", cookies=opened.cookies)
    assert reading.status == 200
    text = reading.body.decode("utf-8")
    assert subject in text
    assert body_text in text
    assert gateway.portal_get("/read").status == 401  # no session cookie, no message
    for response in (page, gateway.portal_get(f"/m/{secrets.token_urlsafe(32)}")):
        assert "max-age=" in response.headers.get("strict-transport-security", "")
        assert "default-src" in response.headers.get("content-security-policy", "")
        assert response.headers.get("x-content-type-options") == "nosniff"
        assert response.headers.get("referrer-policy") == "no-referrer"
    invented = secrets.token_urlsafe(32)
    missing = gateway.portal_get(f"/m/{invented}")
    assert missing.status == 404
    assert subject not in missing.body.decode("utf-8")

    # The access log lines for our requests are written; the tokens are not.
    poll(
        lambda: (
            gateway.log_text().count('"GET /m/<token>" 404') >= 2
            and gateway.log_text().count('"GET /m/<token>" 200') >= 2
        ),
        5,
        lambda: "the portal's access log lines:\n" + gateway.tail(),
    )
    log = gateway.log_text()
    assert token not in log
    assert invented not in log

    # The log follows the message by its short id (README: "Following a message in the log").
    accepted = re.search(
        rf"([0-9a-f]{{10}}): accepted from 127\.0\.0\.1 sender=<{re.escape(SENDER)}>"
        rf" size=\d+ recipients=<{re.escape(address)}> \(letter\)",
        log,
    )
    assert accepted is not None, gateway.tail()
    sid = accepted.group(1)
    life = [
        rf"{sid}: notification [0-9a-f]{{10}} queued to=<{re.escape(address)}>",
        rf"{sid}: notification [0-9a-f]{{10}} to=<{re.escape(address)}>"
        rf" relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+ delay=[0-9.]+s status=sent \(250 .*\)",
        rf"{sid}: opened to=<{re.escape(address)}> from 127\.0\.0\.1",
    ]
    for pattern in life:
        poll(
            lambda pattern=pattern: re.search(pattern, gateway.log_text()) is not None,
            5,
            lambda pattern=pattern: f"no line {pattern!r} in the log:\n" + gateway.tail(),
        )
    log = gateway.log_text()
    for secret in (subject, "Zebra4711", "Kumquat9931"):
        assert secret not in log


def test_mixed_recipients(gateway: Gateway, internet: SmtpSink, internal: SmtpSink) -> None:
    """One message: the .s recipient gets a notification, the internal one the original."""
    mid = msgid("mixed")
    bob = unique("bob") + "@partner.example"
    carol = unique("carol") + "@corp.example"
    message = make_message(
        sender=SENDER,
        to=f"{bob}.s, {carol}",
        subject="Mixed recipients Okapi2044",
        message_id=mid,
        body="Body for both Okapi2044.",
    )
    assert gateway.send(SENDER, [f"{bob}.s", carol], message) == {}

    notification = internet.wait_for_message(
        notification_for(gateway, bob), what=f"the notification to {bob}"
    )
    assert b"Okapi2044" not in notification.data
    relayed = internal.wait_for_message(
        lambda m: m.message_id == mid, what=f"{mid} relayed to {carol}"
    )
    assert relayed.mail_from == SENDER
    assert relayed.rcpt_tos == (carol,)
    assert split_received(relayed.data)[1] == message
    assert not [m for m in internet.messages() if m.message_id == mid], (
        "the original went to the Internet"
    )
    assert not [m for m in internal.messages() if bob in m.rcpt_tos]


def test_forged_verified_header_is_removed(gateway: Gateway, internal: SmtpSink) -> None:
    """X-Secmail-Verified sent by the mail server (any case, folded) never reaches the sink."""
    mid = msgid("forged")
    carol = unique("carol") + "@corp.example"
    message = make_message(
        sender=SENDER,
        to=carol,
        subject="Forged header Quokka7731",
        message_id=mid,
        extra_headers=(
            "X-Secmail-Verified: ceo@corp.example\r\nx-secmail-verified :\r\n\tceo@corp.example\r\n"
        ),
    )
    assert gateway.send(SENDER, [carol], message) == {}
    relayed = internal.wait_for_message(lambda m: m.message_id == mid, what=f"{mid} relayed")
    assert b"secmail-verified" not in relayed.data.lower()
    assert b"ceo@corp.example" not in relayed.data
    assert b"Quokka7731" in relayed.data


def test_bare_postmaster_goes_to_the_internal_server(gateway: Gateway, internal: SmtpSink) -> None:
    """RCPT TO:<PostMaster> (no domain, RFC 5321 4.5.1) is accepted and relayed inside."""
    mid = msgid("postmaster")
    message = make_message(sender=SENDER, to="postmaster", subject="Hi", message_id=mid)
    assert gateway.send(SENDER, ["PostMaster"], message) == {}
    relayed = internal.wait_for_message(lambda m: m.message_id == mid, what=f"{mid} relayed")
    assert relayed.rcpt_tos == ("postmaster",)


def _read_replies(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server says until it closes the connection (bounded)."""
    sock.settimeout(1.0)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(data) < 65536:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_refused_client(gateway: Gateway, internet: SmtpSink, internal: SmtpSink) -> None:
    """A client outside accepted_networks gets 554 at connect, and nothing is stored or sent."""
    before = gateway.received_count()
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(LOOPBACK, gateway.smtp_port, source_address=("127.0.0.2", 0), timeout=10)
    assert info.value.smtp_code == 554

    # A client that ignores the greeting and pipelines a whole transaction gets nowhere.
    marker = unique("refused")
    with socket.create_connection(
        (LOOPBACK, gateway.smtp_port), timeout=10, source_address=("127.0.0.2", 0)
    ) as sock:
        sock.sendall(
            b"EHLO outsider.example\r\nMAIL FROM:<mallory@outside.example>\r\n"
            b"RCPT TO:<dave@partner.example>\r\nDATA\r\n"
            b"Subject: " + marker.encode() + b"\r\n\r\nopen relay?\r\n.\r\nQUIT\r\n"
        )
        replies = _read_replies(sock)
    assert replies.startswith(b"554"), replies
    assert b"\r\n250" not in replies and b"354" not in replies, replies

    # A later message from an accepted client is the only one stored and delivered.
    mid = msgid("after-refused")
    gateway.send(
        SENDER,
        ["dave@partner.example"],
        make_message(sender=SENDER, to="dave@partner.example", subject="ok", message_id=mid),
    )
    internet.wait_for_message(lambda m: m.message_id == mid, what=mid)
    assert gateway.received_count() == before + 1
    for sink in (internet, internal):
        assert not [m for m in sink.messages() if marker.encode() in m.data]
        assert not [m for m in sink.messages() if m.mail_from == "mallory@outside.example"]


def test_registered_letter_address(gateway: Gateway, internet: SmtpSink) -> None:
    """name@domain.NUMBER.s is a registered letter (notified); an impossible number gets 553."""
    carol = unique("carol") + "@partner.example"
    gateway.send(
        SENDER,
        [carol.replace("@partner.example", "@partner.example.0401234567.s")],
        make_message(
            sender=SENDER, to=carol, subject="Registered Wombat7", message_id=msgid("reg")
        ),
    )
    notification = internet.wait_for_message(
        notification_for(gateway, carol), what=f"the notification to {carol}"
    )
    assert b"Wombat7" not in notification.data
    assert any("PIN" in text for text in text_parts(notification))

    with gateway.smtp() as client:
        client.ehlo()
        code, _ = client.mail(SENDER)
        assert code == 250
        code, reply = client.rcpt("x@partner.example.12.s")
        assert code == 553, reply


def test_temporary_failure_then_success(gateway: Gateway, internet: SmtpSink) -> None:
    """A 451 to the final dot is retried (retry_initial=1 s) and the message then arrives."""
    erin = unique("erin") + "@partner.example"
    mid = msgid("retry")
    internet.fail_data("451 4.3.0 Please try again later", times=1, rcpt=erin)
    started = time.monotonic()
    gateway.send(
        SENDER,
        [erin],
        make_message(sender=SENDER, to=erin, subject="retry", message_id=mid),
    )
    got = internet.wait_for_message(
        lambda m: m.message_id == mid, timeout=20, what=f"{mid} after a retry"
    )
    assert got.rcpt_tos == (erin,)
    refused = [r for r in internet.refused() if erin in r[0]]
    assert len(refused) == 1, refused
    print(f"retried delivery arrived after {time.monotonic() - started:.1f} s")


def test_permanent_failure_bounces(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink
) -> None:
    """A 550 to RCPT makes an RFC 3464 bounce (from <>) to the sender on the internal route."""
    nobody = "nobody@partner.example"
    internet.refuse_rcpt(nobody, "550 5.1.1 <nobody@partner.example>: User unknown")
    mid = msgid("bounce")
    gateway.send(
        SENDER,
        [nobody],
        make_message(sender=SENDER, to=nobody, subject="Doomed Narwhal3", message_id=mid),
    )
    dsn = internal.wait_for_message(
        lambda m: m.mail_from == "" and mid.encode() in m.data,
        timeout=20,
        what=f"the bounce of {mid}",
    )
    assert dsn.rcpt_tos == (SENDER,)
    parsed = dsn.parsed()
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert re.search(rb"(?im)^Final-Recipient:\s*rfc822;\s*nobody@partner\.example\s*$", dsn.data)
    assert re.search(rb"(?im)^Action:\s*failed\s*$", dsn.data)
    assert re.search(rb"(?im)^Status:\s*5\.1\.1\s*$", dsn.data)
    assert not [m for m in internet.messages() if m.message_id == mid]


def test_returned_notification_tells_sender(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink
) -> None:
    """A notification bounced later by mail (to its VERP address) makes a DSN to the sender."""
    frank = "frank@partner.example"
    gateway.send(
        SENDER,
        [frank + ".s"],
        make_message(
            sender=SENDER, to=frank + ".s", subject="Quiet Walrus7", message_id=msgid("r")
        ),
    )
    notification = internet.wait_for_message(
        notification_for(gateway, frank), timeout=20, what="the notification to frank"
    )
    # The remote server accepted it, then bounced it: a DSN from <> to the VERP sender.
    remote_dsn = (
        "From: MAILER-DAEMON@partner.example\r\n"
        f"To: {notification.mail_from}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n--b1\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.partner.example\r\n\r\n"
        f"Final-Recipient: rfc822; {frank}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n"
        "--b1--\r\n"
    ).encode()
    gateway.send("", [notification.mail_from], remote_dsn)
    dsn = internal.wait_for_message(
        lambda m: m.mail_from == "" and frank.encode() in m.data and b"5.2.2" in m.data,
        timeout=20,
        what="the DSN about frank's returned notification",
    )
    assert dsn.rcpt_tos == (SENDER,)
    assert dsn.parsed().get_content_type() == "multipart/report"
    assert b"Mailbox full" in dsn.data


def test_size_limit(gateway: Gateway, internet: SmtpSink, internal: SmtpSink) -> None:
    """Over max_message_size (20000): 552 with or without SIZE=; nothing stored or sent."""
    before = gateway.received_count()
    big_id = msgid("big")
    big = make_message(
        sender=SENDER,
        to="dave@partner.example",
        subject="too big",
        message_id=big_id,
        body="".join(f"line {i:05d} " + "x" * 60 + "\r\n" for i in range(400)),
    )
    assert len(big) > 20000
    with gateway.smtp() as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail(SENDER, ["dave@partner.example"], big)  # declares SIZE=
        assert info.value.smtp_code == 552
        # Without SIZE= the limit is enforced on the data itself.
        client.rset()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("dave@partner.example")[0] == 250
        code, reply = client.data(big)
        assert code == 552, reply
        # The session is still usable.
        small_id = msgid("small")
        small = make_message(
            sender=SENDER, to="dave@partner.example", subject="small", message_id=small_id
        )
        assert client.sendmail(SENDER, ["dave@partner.example"], small) == {}
    internet.wait_for_message(lambda m: m.message_id == small_id, what=small_id)
    assert gateway.received_count() == before + 1
    for sink in (internet, internal):
        assert not [m for m in sink.messages() if m.message_id == big_id]


def refused_start(tmp_path: Path, conf: Path, key: str) -> list[str]:
    """
    Run twistd with C{conf}: it must exit at once, non-zero, without a traceback; the
    output's lines that name C{key} are returned.
    """
    try:
        result = subprocess.run(  # noqa: S603
            [twistd_path(), "-n", "--pidfile=", "secmail", "--config", str(conf)],
            cwd=tmp_path,
            env=run_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=20,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"twistd did not stop within 20 s ({key}); output: {e.output!r}")
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if key in line]


def test_bad_configuration(tmp_path: Path) -> None:
    """An unknown key stops twistd at once, non-zero, with one line naming it and no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nbogus = 1\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
    assert len(refused_start(tmp_path, bad, "smtp.bogus")) == 1


def test_port_taken_stops_start_up(tmp_path: Path) -> None:
    """SMTP port taken: twistd exits non-zero with one line naming smtp.listen, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        conf = tmp_path / "taken.toml"
        conf.write_text(
            f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
            f'[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            '[portal]\nlisten = ["ssl:0:interface=127.0.0.1"]\n'
            '[admin]\nlisten = ["ssl:0:interface=127.0.0.1"]\n'
        )
        naming = refused_start(tmp_path, conf, "smtp.listen")
    # By then twistd's log has taken stderr: the line is in the log, once.
    assert len(naming) == 1, naming
    assert naming[0].endswith(
        f"secmail: smtp.listen: cannot listen on tcp:{port}:interface=127.0.0.1: Address "
        "already in use (another program, or another secmail, is using that port)"
    ), naming


# --- crash safety ----------------------------------------------------------------------

CRASH_WORKERS = 10
CRASH_PER_WORKER = 30
CRASH_KILL_AFTER = 100


def test_crash_safety(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SIGKILL under load loses no message that got 250: all arrive after a restart."""
    internet = SmtpSink("internet sink (crash test)").start()
    request.addfinalizer(internet.stop)
    internal = SmtpSink("internal sink (crash test)").start()
    request.addfinalizer(internal.stop)
    gw = Gateway(
        tmp_path / "gateway",
        internet,
        internal,
        {"secure": {"mode": "all"}, "queue": {"retry_initial": 1, "retry_max": 2}},
    )
    request.addfinalizer(gw.stop)
    # A third of the deliveries are first answered 451, so that the queue also holds deferred
    # rows (not only fresh and in-flight ones) when the gateway is killed.
    for n in range(0, CRASH_WORKERS * CRASH_PER_WORKER, 3):
        real = f"bob{n}@partner.example" if n % 2 else f"dave{n}@partner.example"
        internet.fail_data("451 4.3.0 Not yet", times=1, rcpt=real)
    gw.start()

    lock = threading.Lock()
    accepted_plain: set[str] = set()  # Message-IDs
    accepted_marked: set[str] = set()  # real recipient addresses
    interrupted: list[str] = []

    def worker(w: int) -> None:
        try:
            with gw.smtp() as client:
                for i in range(CRASH_PER_WORKER):
                    n = w * CRASH_PER_WORKER + i
                    mid = f"<crash-{n}-{secrets.token_hex(4)}@corp.example>"
                    if n % 2:
                        real, rcpt = f"bob{n}@partner.example", f"bob{n}@partner.example.s"
                    else:
                        real = rcpt = f"dave{n}@partner.example"
                    message = make_message(
                        sender=SENDER,
                        to=real,
                        subject=f"crash test {n}",
                        message_id=mid,
                        body=f"Message number {n}.\r\n" * 20,
                    )
                    client.sendmail(SENDER, [rcpt], message)  # raises unless 250
                    with lock:
                        (accepted_marked if n % 2 else accepted_plain).add(real if n % 2 else mid)
        except (smtplib.SMTPException, OSError) as e:
            with lock:
                interrupted.append(f"worker {w}: {type(e).__name__}: {e}")

    def count() -> int:
        with lock:
            return len(accepted_plain) + len(accepted_marked)

    threads = [
        threading.Thread(target=worker, args=(w,), daemon=True) for w in range(CRASH_WORKERS)
    ]
    for t in threads:
        t.start()
    poll(
        lambda: count() >= CRASH_KILL_AFTER or not any(t.is_alive() for t in threads),
        60,
        lambda: f"only {count()} messages accepted; interrupted: {interrupted}",
        step=0.005,
    )
    gw.kill()
    at_kill = count()
    arrived_before_kill = len(internet.messages())
    deadline = time.monotonic() + 30
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client thread hung after the kill"
    with lock:
        plain, marked = set(accepted_plain), set(accepted_marked)
    accepted = len(plain) + len(marked)
    assert accepted < CRASH_WORKERS * CRASH_PER_WORKER, "the kill came after everything was sent"
    assert accepted >= CRASH_KILL_AFTER

    gw.start()

    def missing() -> tuple[set[str], set[str]]:
        messages = internet.messages()
        ids = {m.message_id for m in messages}
        notified = {
            r for m in messages if is_notification_sender(gw, m.mail_from) for r in m.rcpt_tos
        }
        return plain - ids, marked - notified

    def describe() -> str:
        lost_plain, lost_marked = missing()
        return (
            f"{len(lost_plain)} accepted plain message(s) and {len(lost_marked)} accepted marked "
            f"one(s) never arrived, e.g. {sorted(lost_plain)[:5]} {sorted(lost_marked)[:5]}\n"
            + gw.tail(20)
        )

    poll(lambda: missing() == (set(), set()), 60, describe, step=0.1)

    messages = internet.messages()
    per_id = Counter(m.message_id for m in messages if m.mail_from == SENDER)
    per_rcpt = Counter(
        r for m in messages if is_notification_sender(gw, m.mail_from) for r in m.rcpt_tos
    )
    duplicates = sum(n - 1 for n in per_id.values() if n > 1) + sum(
        n - 1 for n in per_rcpt.values() if n > 1
    )
    report = (
        f"crash test: {accepted} accepted with 250 before the kill ({len(plain)} plain, "
        f"{len(marked)} marked; {at_kill} counted at the kill), {len(interrupted)} sessions "
        f"interrupted; {arrived_before_kill} had arrived at the kill "
        f"({len(internet.refused())} deliveries answered 451 in all); "
        f"in all {len(messages)} message(s) at the internet sink "
        f"({len(per_id)} distinct relayed, {len(per_rcpt)} distinct notified), "
        f"{duplicates} duplicate(s), 0 lost; intake committed {gw.received_count()}"
    )
    print(report)
    request.node.user_properties.append(("crash_report", report))

    # And the restarted gateway still stops cleanly on SIGTERM, with nothing unhandled logged.
    # (twistd re-raises the signal that stopped it, so a clean stop exits "killed by SIGTERM".)
    gw.stop()
    assert gw.returncode in (0, -signal.SIGTERM), gw.tail()
    log = gw.log_text()
    assert "Traceback" not in log and "Unhandled" not in log, gw.tail()
