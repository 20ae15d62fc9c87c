"""
Message trace and revoke end to end: the real C{twistd secmail} takes a letter over SMTP
(smtplib), C{secmail messages --recipient} finds it, C{secmail messages revoke} withdraws it
while the gateway runs, and the letter's link then answers 410, withdrawn.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.harness import REPO_ROOT, Gateway, SmtpSink, make_message, run_env, running
from tests.e2e.mails import link_token, msgid, notification_for, unique

SENDER = "alice@corp.example"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("trace-gateway"), internet, internal)
    with running(gw) as started:
        yield started


def secmail(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """The admin command on the running gateway's configuration."""
    return subprocess.run(
        [sys.executable, "-m", "secmail.cli", "--config", str(gw.config_path), *args],
        cwd=REPO_ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_find_and_revoke_a_letter(gateway: Gateway, internet: SmtpSink) -> None:
    """A letter sent by SMTP is found by its marked recipient, withdrawn, and its link says so."""
    subject = "Wrong recipient Quince5521"
    recipient = unique("bob")
    address = f"{recipient}@partner.example"
    message = make_message(
        sender=SENDER, to=address, subject=subject, message_id=msgid("trace"), body="Secret."
    )
    gateway.send(SENDER, [f"{address}.s"], message)
    notification = internet.wait_for_message(
        notification_for(gateway, address), what=f"the notification to {address}"
    )
    token = link_token(gateway, notification)
    landing = gateway.portal_get(f"/m/{token}")
    assert landing.status == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', landing.body.decode("utf-8"))
    assert csrf is not None
    opened = gateway.portal_post(f"/m/{token}", {"csrf": csrf.group(1)})
    assert opened.status == 303
    assert gateway.portal_get("/read", cookies=opened.cookies).status == 200

    found = secmail(gateway, "messages", "--recipient", f"{address}.s")
    assert found.returncode == 0, found.stderr
    header, row = found.stdout.splitlines()
    short = row.split()[0]
    assert re.fullmatch(r"[0-9a-f]{10}", short), row
    assert SENDER in row and address in row
    shown = secmail(gateway, "messages", "show", short)
    assert shown.returncode == 0, shown.stderr
    assert f"Recipient {address}\n  level letter, state opened" in shown.stdout
    assert subject not in found.stdout + shown.stdout and token not in shown.stdout

    revoked = secmail(gateway, "messages", "revoke", short)
    assert revoked.returncode == 0, revoked.stderr
    assert f"Withdrawn: {address} (letter)" in revoked.stdout
    assert "its content is deleted" in revoked.stdout

    gone = gateway.portal_get(f"/m/{token}")
    assert gone.status == 410
    page = gone.body.decode("utf-8")
    assert "The sender has withdrawn this message" in page
    assert subject not in page
    assert gateway.portal_get("/read", cookies=opened.cookies).status == 401
    shown = secmail(gateway, "messages", "show", short)
    assert f"Recipient {address}\n  level letter, state revoked" in shown.stdout
