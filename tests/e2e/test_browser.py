"""
The recipient portal in a real browser: headless Chromium (Playwright) against the real
C{twistd -n secmail} process, with SMTP sinks for the Internet and the internal server.

One gateway, two sinks and one browser are shared by the module; each test opens its own
browser contexts (a context is a fresh browser profile: its own cookies). Every wait is
bounded by Playwright's timeouts or the harness's polling loops, and every browser, context
and process is closed by a finalizer.
"""

from __future__ import annotations

import email.policy
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    FilePayload,
    Page,
    Playwright,
    sync_playwright,
)
from playwright.sync_api import expect as pw_expect

from secmail.web.sanitise import FRAME_STYLE
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.fake_sms import FakeSmsGateway
from tests.e2e.harness import Gateway, SinkMessage, SmtpSink, poll
from tests.e2e.mails import link_token, notification_for, text_parts, unique
from tests.e2e.registered import MASKED, NUMBER, pin_of, send_registered, wrong

SENDER = "alice@corp.example"
BOB = "bob@partner.example"
SALES = "sales@corp.example"
pytestmark = needs_chromium
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pw_expect.set_options(timeout=TIMEOUT_MS)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("browser-gateway"),
        internet,
        internal,
        # corp.example is one of the harness's default incoming_domains.
        settings={"portal": {"compose_directory": [SALES]}},
    )
    try:
        yield gw.start()
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
    )
    try:
        yield b
    finally:
        b.close()


class Contexts:
    """Makes fresh browser contexts (profiles); closes them all at the end."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.opened: list[BrowserContext] = []

    def new(self, **options: Any) -> BrowserContext:
        context = self.browser.new_context(
            ignore_https_errors=True, accept_downloads=True, **options
        )
        self.opened.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        return context

    def page(self, **options: Any) -> Page:
        return self.new(**options).new_page()

    def close(self) -> None:
        while self.opened:
            self.opened.pop().close()


@pytest.fixture(scope="module")
def module_contexts(browser: Browser) -> Iterator[Contexts]:
    contexts = Contexts(browser)
    try:
        yield contexts
    finally:
        contexts.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Contexts]:
    contexts = Contexts(browser)
    try:
        yield contexts
    finally:
        contexts.close()


# --- the letter to Bob (tests 1, 2 and 5 share it) ---------------------------------------


def tiny_png(width: int = 16, height: int = 12) -> bytes:
    """A valid RGB PNG, one colour, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x1f\x5f\xae" * width for _ in range(height))
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Letter:
    link: str
    subject: str
    text: str
    attachment: bytes
    png: bytes


def send_marked(
    gateway: Gateway, internet: SmtpSink, recipient: str, message: EmailMessage | bytes
) -> str:
    """Send C{message} to C{recipient}.s and return the link from its (new) notification."""
    is_notification = notification_for(gateway, recipient)
    before = len([m for m in internet.messages() if is_notification(m)])
    if isinstance(message, EmailMessage):
        message = message.as_bytes(policy=email.policy.SMTP)
    gateway.send(SENDER, [recipient + ".s"], message)
    notifications = internet.wait_for(
        lambda ms: [m for m in ms if is_notification(m)][before:],
        what=f"the notification to {recipient}",
    )
    return f"{gateway.portal_url}/m/{link_token(gateway, notifications[0])}"


def new_message(recipient: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Alice Sender <{SENDER}>"
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = f"<{unique('browser')}@corp.example>"
    message["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    return message


@pytest.fixture(scope="module")
def letter(gateway: Gateway, internet: SmtpSink) -> Letter:
    subject = "Quarterly figures Okapi5521"
    text = "The plain text part says Marmot8842."
    png = tiny_png()
    attachment = os.urandom(50 * 1024)
    message = new_message(BOB, subject)
    message.set_content(text + "\n")
    message.add_alternative(
        "<html><body><p>The HTML part has <b>bold words</b>.</p>"
        '<p><img src="cid:logo.7731@corp.example" alt="logo" width="16" height="12"></p>'
        "</body></html>",
        subtype="html",
    )
    payload = message.get_payload()
    assert isinstance(payload, list)
    html_part = payload[1]
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(png, "image", "png", cid="<logo.7731@corp.example>")
    message.add_attachment(attachment, "application", "pdf", filename="report.pdf")
    link = send_marked(gateway, internet, BOB, message)
    return Letter(link, subject, text, attachment, png)


@pytest.fixture(scope="module")
def bob(module_contexts: Contexts) -> BrowserContext:
    """Bob's own browser: the first one to open his letter."""
    return module_contexts.new()


def open_letter(page: Page, link: str) -> None:
    """From the link to the reading page, as a reader would: the landing page, then "Open"."""
    page.goto(link)
    page.get_by_role("button", name="Open message").click()
    page.wait_for_url(re.compile(r"/read$"))
    page.wait_for_load_state("load")


def path_of(url: str) -> str:
    return re.sub(r"^https://[^/]+", "", url)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- the tests -------------------------------------------------------------------------


def test_read_secure_letter_like_a_recipient(letter: Letter, bob: BrowserContext) -> None:
    """A recipient opens the link, reads subject, text and sanitised HTML, gets the attachment."""
    page = bob.new_page()
    try:
        page.goto(letter.link)
        pw_expect(page.get_by_text(SENDER)).to_be_visible()
        open_button = page.get_by_role("button", name="Open message")
        pw_expect(open_button).to_be_visible()
        open_button.click()
        page.wait_for_url(re.compile(r"/read$"))
        assert path_of(page.url) == "/read"
        assert letter.link.rsplit("/", 1)[1] not in page.url
        pw_expect(page.get_by_role("heading", name=letter.subject)).to_be_visible()
        pw_expect(page.get_by_text(SENDER)).to_be_visible()
        # With an HTML part the text part sits in a closed "Plain text" box: open it.
        page.get_by_text("Plain text", exact=True).click()
        pw_expect(page.get_by_text(letter.text)).to_be_visible()

        frame = page.frame_locator("iframe")
        pw_expect(frame.locator("b", has_text="bold words")).to_be_visible()
        pw_expect(frame.locator("img")).to_have_count(1)  # whether it loads: the next test

        pw_expect(page.get_by_role("heading", name="Attachments")).to_be_visible()
        with page.expect_download() as info:
            page.click("text=report.pdf")
        download = info.value
        assert download.suggested_filename == "report.pdf"
        path = download.path()
        assert Path(path).read_bytes() == letter.attachment
        assert path_of(page.url) == "/read"
    finally:
        page.close()


def test_inline_cid_image_loads(letter: Letter, bob: BrowserContext) -> None:
    """The HTML part's inline (cid:) image is shown inside the sandboxed iframe."""
    page = bob.new_page()
    try:
        open_letter(page, letter.link)  # Bob's browser: no code needed
        image = page.frame_locator("iframe").locator("img")
        pw_expect(image).to_have_count(1)
        page.wait_for_load_state("load")  # waits for the iframe and its image
        natural = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert natural == [True, 16, 12], f"the cid image did not load: {natural}"
    finally:
        page.close()


@pytest.mark.parametrize(("name", "width", "height"), [("phone", 360, 740), ("desktop", 1280, 800)])
def test_reading_page_screenshots(
    letter: Letter, bob: BrowserContext, name: str, width: int, height: int
) -> None:
    """The reading page renders at phone and desktop widths (screenshots kept for a look)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = bob.new_page()
    try:
        page.set_viewport_size({"width": width, "height": height})
        open_letter(page, letter.link)  # Bob's browser: no code needed
        pw_expect(page.frame_locator("iframe").get_by_text("bold words")).to_be_visible()
        shot = ARTIFACTS / f"read-{name}-{width}x{height}.png"
        shot.unlink(missing_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        assert len(data) > 5_000, f"{shot} is only {len(data)} bytes"
        shot_width, shot_height = png_size(data)
        assert shot_width == width and shot_height >= height, (shot_width, shot_height)
        scroll_width, inner_width = page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert inner_width == width
        if width <= 400:
            assert scroll_width <= inner_width + 1, (
                f"horizontal scrolling at {width} px: scrollWidth {scroll_width}"
            )
    finally:
        page.close()


XSS_MARK = "xss-ran-7f3a"
XSS_CORPUS = [
    "<script>window.top.pwned=1;alert(1)</script>",
    f"<script>console.log('{XSS_MARK}')</script>",
    '<img src=x onerror="alert(1)">',
    f"<img src=x onerror=\"console.log('{XSS_MARK}')\">",
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<iframe srcdoc="<script>alert(1)</script>">',
    '<meta http-equiv="refresh" content="0;url=https://example.invalid/">',
    '<form action="https://example.invalid"><input name=q></form>',
    "<style>body{background:url(javascript:alert(1))}</style>",
    "<math><mtext><script>alert(1)</script></mtext></math>",
    '<body onload="alert(1)"><p>Harmless paragraph Quokka3317.</p>',
]


def test_xss_corpus_never_runs(gateway: Gateway, internet: SmtpSink, contexts: Contexts) -> None:
    """Script in a message's HTML never runs, raises no dialog and navigates nothing."""
    recipient = unique("xss") + "@partner.example"
    message = new_message(recipient, "XSS corpus")
    message.set_content(
        "<html><head></head><body>" + "\n".join(XSS_CORPUS) + "</body></html>", subtype="html"
    )
    link = send_marked(gateway, internet, recipient, message)

    page = contexts.page()
    dialogs: list[str] = []
    console: list[str] = []
    errors: list[str] = []
    requests: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))

    open_letter(page, link)
    frame = page.frame_locator("iframe")
    pw_expect(frame.get_by_text("Harmless paragraph Quokka3317.")).to_be_visible()
    page.wait_for_load_state("load")
    page.wait_for_timeout(1_000)  # room for a zero-second refresh or a late handler

    assert dialogs == []
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert path_of(page.url) == "/read"
    assert page.evaluate("document.scripts.length") == 0
    frames = [f for f in page.frames if f != page.main_frame]
    assert [path_of(f.url) for f in frames] == ["/read/html"], [f.url for f in page.frames]
    assert not [c for c in console if XSS_MARK in c or "alert" in c], console
    assert errors == []
    assert not [u for u in requests if "example.invalid" in u or u.startswith("javascript:")]
    # What reached the iframe: nothing active survived the sanitiser.
    # (The document's own <head> holds two <meta> of ours: look at the body only.)
    active = frame.locator("body").locator(
        "script, iframe, svg, math, meta, form, input, style, [onerror], [onload]"
    )
    assert active.count() == 0, active.evaluate_all("nodes => nodes.map(n => n.outerHTML)")
    assert frame.locator("head script").count() == 0
    # The head's one style sheet is ours (the interface's font), the only one its CSP allows.
    assert frame.locator("head style").all_text_contents() == [FRAME_STYLE]
    for href in frame.locator("a").evaluate_all("links => links.map(a => a.href)"):
        assert not href.lower().startswith("javascript:"), href


def test_link_scanner_fetch_consumes_nothing(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """A scanner's plain GET of the link consumes nothing: the browser can still open it."""
    recipient = unique("scanned") + "@partner.example"
    subject = "Scanned first Wombat6604"
    message = new_message(recipient, subject)
    message.set_content("Read after the scanner.\n")
    link = send_marked(gateway, internet, recipient, message)

    path = path_of(link)
    for _ in range(2):
        scanned = gateway.portal_get(path)
        assert scanned.status == 200
        assert scanned.cookies == {}
        assert subject not in scanned.body.decode("utf-8")

    page = contexts.page()
    open_letter(page, link)
    assert path_of(page.url) == "/read"
    pw_expect(page.get_by_role("heading", name=subject)).to_be_visible()
    pw_expect(page.get_by_text("Read after the scanner.")).to_be_visible()


def is_code_mail_to(address: str) -> Callable[[SinkMessage], bool]:
    def match(m: SinkMessage) -> bool:
        subject = m.header("subject")
        return m.rcpt_tos == (address,) and subject == "Your code for the secure message"

    return match


def test_another_browser_needs_a_code(
    letter: Letter,
    bob: BrowserContext,
    gateway: Gateway,
    internet: SmtpSink,
    contexts: Contexts,
) -> None:
    """A second browser must type a code mailed to the recipient before it can read."""
    first = bob.new_page()
    try:
        open_letter(first, letter.link)  # bound to Bob's browser (already so after test 1)
    finally:
        first.close()

    page = contexts.page()
    page.goto(letter.link)
    page.get_by_role("button", name="Open message").click()
    pw_expect(page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    pw_expect(page.get_by_text(letter.subject)).to_have_count(0)

    is_code = is_code_mail_to(BOB)
    before = len([m for m in internet.messages() if is_code(m)])
    page.get_by_role("button", name="Send me a code").click()
    pw_expect(page.get_by_label("Code")).to_be_visible()
    codes = internet.wait_for(
        lambda ms: [m for m in ms if is_code(m)][before:],
        what=f"the code mail to {BOB}",
    )
    found = re.search(r"secure message is: (\d{6})\b", "\n".join(text_parts(codes[0])))
    assert found is not None, codes[0].data[:2000]

    page.get_by_label("Code").fill(found.group(1))
    page.get_by_role("button", name="Open message").click()
    page.wait_for_url(re.compile(r"/read$"))
    pw_expect(page.get_by_role("heading", name=letter.subject)).to_be_visible()
    pw_expect(page.frame_locator("iframe").get_by_text("bold words")).to_be_visible()


def test_keyboard_opens_the_message(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """On the landing page, Tab reaches the "Open message" button and Enter opens it."""
    recipient = unique("keys") + "@partner.example"
    subject = "Opened with the keyboard Ibex2290"
    message = new_message(recipient, subject)
    message.set_content("No mouse was used.\n")
    link = send_marked(gateway, internet, recipient, message)

    page = contexts.page()
    page.goto(link)
    page.keyboard.press("Tab")
    pw_expect(page.get_by_role("button", name="Open message")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/read$"))
    pw_expect(page.get_by_role("heading", name=subject)).to_be_visible()


def test_browsing_causes_no_server_error(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """Reading a letter in a browser makes no 5xx answer and no failure in the portal's log."""
    recipient = unique("quiet") + "@partner.example"
    message = new_message(recipient, "Nothing fails")
    message.set_content("Nothing fails.\n")
    link = send_marked(gateway, internet, recipient, message)
    start = len(gateway.log_text())

    page = contexts.page()
    open_letter(page, link)
    pw_expect(page.get_by_role("heading", name="Nothing fails")).to_be_visible()
    page.goto(f"{gateway.portal_url}/no/such/page")  # a mistyped address: 404, not 500
    poll(
        lambda: '"GET /no/such/page"' in gateway.log_text()[start:],
        5,
        lambda: "the access log line for /no/such/page:\n" + gateway.tail(),
    )
    log = gateway.log_text()[start:]
    server_errors = re.findall(r'"[A-Z]+ [^"]*" 5\d\d .*', log)
    assert server_errors == [], server_errors
    assert "Portal request failed" not in log, gateway.tail()
    assert gateway.portal_get("/no/such/page").status == 404


def test_hostile_letters_are_shown_safely(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """A letter declared in punycode shows its text as it came (not decoded by that codec),
    and one nested 600 deep gets a "too complex" page with the .eml: no 5xx, no traceback."""
    recipient = unique("hostile") + "@partner.example"
    head = (
        f"From: Alice Sender <{SENDER}>\r\nTo: {recipient}\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    ).encode()
    # Punycode would keep what comes before the last "-" and make something else of the rest.
    body = b"Punycode7741\r\n" + (b"a" * 70 + b"-\r\n") * 3000 + b"End5521\r\n"
    punycode = head + b"Subject: Declared punycode\r\n"
    punycode += b"Content-Type: text/plain; charset=punycode\r\n\r\n" + body
    deep = b"Content-Type: text/plain\r\n\r\nDeepText3318\r\n"
    for _ in range(600):
        deep = b"Content-Type: message/rfc822\r\n\r\n" + deep
    deep = head + b"Subject: Nested deep\r\n" + deep
    start = len(gateway.log_text())

    page = contexts.page()
    open_letter(page, send_marked(gateway, internet, recipient, punycode))
    pw_expect(page.get_by_role("heading", name="Declared punycode")).to_be_visible()
    pw_expect(page.locator("pre")).to_contain_text("Punycode7741\n" + "a" * 70 + "-\n")
    pw_expect(page.locator("pre")).to_contain_text("a-\nEnd5521")

    page = contexts.page()
    open_letter(page, send_marked(gateway, internet, recipient, deep))
    pw_expect(page.get_by_role("heading", name="Message too complex to show")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "too-complex-page.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_role("link", name="Save the whole message (.eml)").click()
    assert b"DeepText3318" in Path(info.value.path()).read_bytes()

    log = gateway.log_text()[start:]
    assert re.findall(r'"[A-Z]+ [^"]*" 5\d\d .*', log) == []
    assert "Traceback" not in log and "Portal request failed" not in log, gateway.tail()
    assert "is too complex to show: parts nested more than 20 deep" in log, gateway.tail()


# --- replying from the portal, and writing in (D-Compose) --------------------------------

CAROL = "carol@partner.example"
DAVE = "dave@corp.example"


def mail_text(message: SinkMessage) -> str:
    """The decoded text parts of a mail, joined."""
    return "\n".join(text_parts(message))


def attachments_of(message: SinkMessage) -> list[tuple[str | None, str, bytes]]:
    """(file name, content type, bytes) of each attachment."""
    found = []
    for part in message.parsed().iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes), part
        found.append((part.get_filename(), part.get_content_type(), data))
    return found


def mentions(message: SinkMessage, text: str) -> bool:
    return text.encode() in message.data or text in mail_text(message)


def assert_none_arrive(
    sinks: list[SmtpSink], match: Callable[[SinkMessage], bool], seconds: float, what: str
) -> None:
    """For C{seconds} (bounded), no sink holds a message that C{match}es."""
    deadline = time.monotonic() + seconds
    while True:
        found = [f"{s.name}: {m.summary()}" for s in sinks for m in s.messages() if match(m)]
        assert found == [], f"{what}: {found}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def reply_for(rcpt: str, subject: str) -> Callable[[SinkMessage], bool]:
    def match(m: SinkMessage) -> bool:
        return rcpt in m.rcpt_tos and m.header("subject") == f"Re: {subject}"

    return match


def test_reply_with_attachment_reaches_sender_threaded(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink, contexts: Contexts
) -> None:
    """A reply with a file goes to the internal sender, threaded, quoting, the file intact."""
    recipient = unique("replier") + "@partner.example"
    subject = unique("Please confirm Heron")
    message = new_message(recipient, subject)
    message["References"] = "<older-4471@corp.example>"
    message.set_content("Please confirm the figures Heron4471.\nThe second line.\n")
    original_id = str(message["Message-ID"])
    link = send_marked(gateway, internet, recipient, message)

    page = contexts.page()
    open_letter(page, link)
    pw_expect(page.get_by_role("heading", name=subject)).to_be_visible()
    typed = "Confirmed, see the file. Pelican3390."
    page.get_by_label("Your reply").fill(typed)
    upload = os.urandom(30 * 1024)
    page.locator("#reply-files").set_input_files(
        files=[FilePayload(name="answer.bin", mimeType="application/octet-stream", buffer=upload)]
    )
    pw_expect(page.get_by_role("button", name="Reply all")).to_have_count(0)
    page.get_by_role("button", name="Reply", exact=True).click()
    page.wait_for_url(re.compile(r"/read/sent$"))
    pw_expect(page.get_by_role("heading", name="Sent")).to_be_visible()
    status = page.get_by_role("status")
    pw_expect(status).to_contain_text(f"Reply sent by e-mail to {SENDER}.")
    pw_expect(status).to_contain_text("Attached: answer.bin.")

    mail = internal.wait_for_message(reply_for(SENDER, subject), what=f"the reply to {SENDER}")
    assert mail.rcpt_tos == (SENDER,)
    assert mail.header("in-reply-to") == original_id
    references = (mail.header("references") or "").split()
    assert original_id in references and "<older-4471@corp.example>" in references, references
    text = mail_text(mail)
    assert typed in text, text
    assert "> Please confirm the figures Heron4471." in text, text
    assert attachments_of(mail) == [("answer.bin", "application/octet-stream", upload)]
    assert not [m for m in internet.messages() if mentions(m, typed)]


def test_reply_all_to_an_outsider_goes_secure(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink, contexts: Contexts
) -> None:
    """Reply all: the internal Cc gets the reply, the outside Cc only a notification."""
    subject = unique("Team figures Gannet")
    message = new_message(BOB, subject)
    message["Cc"] = f"Carol Outside <{CAROL}>, Dave Inside <{DAVE}>"
    message.set_content("For all of you: Gannet7105.\n")
    original_id = str(message["Message-ID"])
    link = send_marked(gateway, internet, BOB, message)

    page = contexts.page()  # a fresh browser: the first to open this letter
    open_letter(page, link)
    pw_expect(page.get_by_role("heading", name=subject)).to_be_visible()
    typed = "Answer to everyone: Puffin8826."
    is_carols = notification_for(gateway, CAROL)
    before = len([m for m in internet.messages() if is_carols(m)])
    page.get_by_label("Your reply").fill(typed)
    page.get_by_role("button", name="Reply all").click()
    page.wait_for_url(re.compile(r"/read/sent$"))
    status = page.get_by_role("status")
    pw_expect(status).to_contain_text(DAVE)
    pw_expect(status).to_contain_text(f"Sent as a secure message to {CAROL}.")

    mail = internal.wait_for_message(reply_for(DAVE, subject), what=f"the reply to {DAVE}")
    assert set(mail.rcpt_tos) == {SENDER, DAVE}, mail.rcpt_tos
    assert mail.header("in-reply-to") == original_id
    assert typed in mail_text(mail)
    assert CAROL in (mail.header("cc") or "")  # named (marked) in Cc, for a later reply all

    notification = internet.wait_for(
        lambda ms: [m for m in ms if is_carols(m)][before:], what=f"the notification to {CAROL}"
    )[0]
    assert not mentions(notification, typed), mail_text(notification)
    assert_none_arrive(
        [internet], lambda m: mentions(m, typed), 1.0, "the reply text went to the Internet"
    )

    # Carol reads the reply in the portal.
    carol = contexts.page()
    open_letter(carol, f"{gateway.portal_url}/m/{link_token(gateway, notification)}")
    pw_expect(carol.get_by_text(typed)).to_be_visible()


def is_compose_code_to(address: str) -> Callable[[SinkMessage], bool]:
    def match(m: SinkMessage) -> bool:
        subject = m.header("subject")
        return m.rcpt_tos == (address,) and subject == "Your code for writing a secure message"

    return match


def sign_in_to_compose(page: Page, gateway: Gateway, internet: SmtpSink, sender: str) -> None:
    """From C{/compose}: choose sales, prove C{sender} with the mailed code; ends writing."""
    is_code = is_compose_code_to(sender)
    before = len([m for m in internet.messages() if is_code(m)])
    page.goto(f"{gateway.portal_url}/compose")
    pw_expect(page.get_by_role("heading", name="Write a secure message")).to_be_visible()
    page.get_by_label("To", exact=True).select_option(SALES)
    page.get_by_label("Your e-mail address").fill(sender)
    page.get_by_role("button", name="Send me a code").click()
    pw_expect(page.get_by_role("heading", name="Confirm your e-mail address")).to_be_visible()
    codes = internet.wait_for(
        lambda ms: [m for m in ms if is_code(m)][before:], what=f"the code mail to {sender}"
    )
    found = re.search(rf"to {re.escape(SALES)} is: (\d{{6}})\b", mail_text(codes[0]))
    assert found is not None, codes[0].data[:2000]
    page.get_by_label("Code").fill(found.group(1))
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(r"/compose/write\?to="))
    pw_expect(page.get_by_text(f"{sender} (confirmed)")).to_be_visible()


def test_compose_to_an_internal_address_arrives(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink, contexts: Contexts
) -> None:
    """An outsider proves their address, writes with a file; sales gets it, Reply-To marked."""
    erin = "erin@partner.example"
    page = contexts.page()
    sign_in_to_compose(page, gateway, internet, erin)
    subject = unique("Offer Kestrel")
    typed = "Here is our offer, Kestrel5068.\nBest, Erin"
    upload = os.urandom(20 * 1024)
    page.get_by_label("Subject").fill(subject)
    page.get_by_label("Message").fill(typed)
    page.get_by_label("Attachments").set_input_files(
        files=[FilePayload(name="offer.pdf", mimeType="application/pdf", buffer=upload)]
    )
    page.get_by_role("button", name="Send securely").click()
    pw_expect(page.get_by_role("heading", name="Message sent")).to_be_visible()
    pw_expect(page.get_by_text(f"Your message to {SALES} is on its way")).to_be_visible()

    mail = internal.wait_for_message(
        lambda m: m.rcpt_tos == (SALES,) and m.header("subject") == subject,
        what=f"the composed mail to {SALES}",
    )
    assert mail.header("reply-to") == erin + ".s"  # a reply from inside stays secure
    assert mail.header("from") == erin
    assert mail.header("x-secmail-verified") == erin
    assert "Here is our offer, Kestrel5068." in mail_text(mail)
    assert attachments_of(mail) == [("offer.pdf", "application/pdf", upload)]
    assert not [m for m in internet.messages() if mentions(m, "Kestrel5068")]


def test_compose_to_an_outside_address_is_refused(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink, contexts: Contexts
) -> None:
    """No form for an outside address; a verified session's tampered send is refused."""
    evil = "evil@partner.example"
    page = contexts.page()
    response = page.goto(f"{gateway.portal_url}/compose/someone@partner.example")
    assert response is not None and response.status == 404
    pw_expect(page.get_by_role("heading", name="Address not found")).to_be_visible()
    assert page.locator("form, input, textarea, button, select").count() == 0

    frank = "frank@partner.example"
    sign_in_to_compose(page, gateway, internet, frank)
    form = page.locator('form[action="/compose/send"]')
    csrf = form.locator('input[name="csrf"]').get_attribute("value")
    assert csrf
    for to in (evil, f"{SALES}, {evil}", evil + ".s"):
        refused = page.request.post(
            f"{gateway.portal_url}/compose/send",
            multipart={"csrf": csrf, "to": to, "subject": "Tampered", "text": "Relay me."},
            max_redirects=0,
        )
        assert 400 <= refused.status < 500, (to, refused.status, refused.text()[:500])
        assert "Nothing was sent" in refused.text()

    # The same through the page: the hidden "to" field changed in the browser.
    form.locator('input[name="to"]').evaluate("(input, to) => { input.value = to; }", evil)
    page.get_by_label("Message").fill("Relay me too.")
    page.get_by_role("button", name="Send securely").click()
    pw_expect(page.get_by_role("heading", name="Not sent")).to_be_visible()

    assert_none_arrive(
        [internet, internal],
        lambda m: evil in m.rcpt_tos or evil.encode() in m.data or m.header("reply-to") == frank,
        3.0,
        f"a tampered compose reached a sink (for {evil})",
    )


# --- a registered letter: the PIN by SMS --------------------------------------------------


def test_registered_letter_opens_only_with_the_sms_pin(
    http_gateway: Gateway, internet: SmtpSink, http_sms: FakeSmsGateway, contexts: Contexts
) -> None:
    """A registered letter shows nothing until the PIN from the SMS is typed; a wrong one fails."""
    letter = send_registered(http_gateway, internet)
    before = len(http_sms.requests())

    page = contexts.page()
    page.goto(f"{http_gateway.portal_url}/m/{letter.token}")
    pw_expect(page.get_by_text("Registered letter (PIN by text message)")).to_be_visible()
    page.get_by_role("button", name="Open message").click()
    pw_expect(page.get_by_role("heading", name="Type the PIN")).to_be_visible()
    pw_expect(page.get_by_text(MASKED)).to_be_visible()
    pin_field = page.get_by_label("PIN", exact=True)
    pw_expect(pin_field).to_be_visible()
    for secret in (letter.subject, letter.body):
        pw_expect(page.get_by_text(secret)).to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "registered-pin-page.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == PNG_SIGNATURE

    request = http_sms.wait_for_requests(before + 1)[before]
    assert request.to == NUMBER
    pin = pin_of(request.text)

    pin_field.fill(wrong(pin))
    page.get_by_role("button", name="Open message").click()
    pw_expect(page.get_by_role("alert")).to_have_text("That PIN is not right. Please try again.")
    assert "/read" not in page.url
    for secret in (letter.subject, letter.body):
        pw_expect(page.get_by_text(secret)).to_have_count(0)

    page.get_by_label("PIN", exact=True).fill(pin)
    page.get_by_role("button", name="Open message").click()
    page.wait_for_url(re.compile(r"/read$"))
    pw_expect(page.get_by_role("heading", name=letter.subject)).to_be_visible()
    pw_expect(page.get_by_text(letter.body)).to_be_visible()
