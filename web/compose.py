"""
D-Compose: outsiders write a secure message to someone in the organisation.

C{/compose} offers the addresses of C{[portal] compose_directory}; C{/compose/<address>}
is a direct link for one internal address. The outsider types their own address and
gets a code by e-mail (limited per mailbox, per client and in all: L{CodeLimits}, set
by C{[portal] compose_codes_*}; 20 wrong codes lock the mailbox); the right code opens
a session (cookie C{__Host-secmail-compose}) whose sender is that verified address. What
they write goes, sealed, onto the queue for the incoming route, From the verified address
and Reply-To its marked form (C{bob@partner.example.s}), so that a reply from inside is a
secure letter again, also in mode C{all}.

The portal is never a relay: the one recipient must be a well-formed address in one of
C{[routes] incoming_domains}; it is checked on every request that names it, and a form
that names more than one is refused.

CSRF: before sign-in a form carries C{HMAC(csrf_key, F)}, where F is a random value in
the cookie C{__Host-secmail-compose-form} (SameSite=Lax: a cross-site POST does not carry
it, so another site can neither read nor replay the pair). After sign-in a form carries
the session's own random CSRF value, kept in the database.

The portal mounts this app at C{/compose} (a Klein branch route). Klein moves the
matched C{compose} segment to C{request.prepath} and leaves the rest in
C{request.postpath}, which is the path this app routes on: its routes are C{/},
C{/start}, C{/<address>}. Links and form actions it writes start with L{MOUNT}.
"""

from __future__ import annotations

import email.policy
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import parse_qs, quote

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from secmail.address import DestinationError, portal_destination
from secmail.config import Settings
from secmail.letters import system_mail
from secmail.notify import Notification, build_code_mail, build_sender_notice, clean_text
from secmail.store.compose import (
    CODE_LIFETIME,
    LOCK_AFTER,
    LOCK_TIME,
    CodeLimits,
    CodeRefusal,
    CodeState,
    ComposeSession,
    ComposeStore,
    trail_id,
)
from secmail.store.messages import MessageStore, NewDelivery, NewMessage
from secmail.store.spool import RunInThread, SealedBytes
from web.i18n import Translate
from web.layout import error_page, render_page, set_security_headers, translation
from web.portal import (
    FormError,
    commit_once,
    cookie_value,
    escape,
    form_arg,
    form_id_field,
    once_id,
    parse_multipart,
    same_secret,
    set_cookie,
)

log = Logger()

#: Where the portal mounts this app.
MOUNT = "/compose"
SESSION_COOKIE = b"__Host-secmail-compose"
FORM_COOKIE = b"__Host-secmail-compose-form"
#: The form cookie outlives a code (10 minutes) with room to spare.
FORM_COOKIE_AGE = 3600

MAX_ADDRESS_CHARS = 254
MAX_SUBJECT_CHARS = 200
MAX_FILENAME_CHARS = 150
#: Types an attachment keeps as the browser named them; anything else is octet-stream.
_CONTENT_TYPE = re.compile(
    r"(application|audio|font|image|model|text|video)/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
)
_BINARY = "application/octet-stream"

_e = escape


# --- the form, parsed off the reactor -----------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One attached file: a name safe for a header, a plain MIME type, the bytes as sent."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class SentForm:
    """A submitted form: text fields by name (every value given) and the attached files."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        """The field's value; None when it is missing or given more than once."""
        values = self.fields.get(name, [])
        return values[0] if len(values) == 1 else None


def parse_form(content_type: str, body: bytes) -> SentForm:
    """
    Read a C{multipart/form-data} or URL-encoded body with the portal's parser (which
    keeps each file's name and type); files come from fields named C{attachment}.
    """
    form = SentForm()
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        form.fields.update(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
        return form
    if media != "multipart/form-data":
        return form
    try:
        submitted = parse_multipart(body, content_type.encode("latin-1", "replace"))
    except FormError:
        return form
    form.fields = submitted.fields
    form.uploads = [
        Upload(upload_name(u.filename), upload_type(u.content_type), u.data)
        for u in submitted.uploads("attachment")
        if u.filename or u.data
    ]
    return form


def upload_name(filename: str) -> str:
    """A file name fit for a header: no path, no control or format characters, not too long."""
    name = re.split(r"[/\\]", filename.encode("utf-8", "replace").decode("utf-8"))[-1]
    name = clean_text(name, 10 * MAX_FILENAME_CHARS).strip(". ")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1].rstrip(". ") + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip(". ")
    return name or "attachment"


def upload_type(content_type: str) -> str:
    content_type = content_type.strip().lower()
    return content_type if _CONTENT_TYPE.fullmatch(content_type) else _BINARY


# --- the mails ----------------------------------------------------------------------------


def build_compose_mail(
    *,
    sender: str,
    reply_to: str,
    to: str,
    subject: str,
    text: str,
    uploads: list[Upload],
    message_id_domain: str,
    date: datetime,
) -> bytes:
    """
    The message as the internal mail server gets it. C{sender} is the verified
    address and C{reply_to} its marked form, so a reply goes back through the gateway
    as a secure letter; C{to} and C{sender} were checked by L{portal_destination}, and
    C{subject} is
    one cleaned line, so no value can start a header of its own (the SMTP policy
    refuses a line break in a header value besides).
    """
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["Reply-To"] = reply_to
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = make_msgid(domain=message_id_domain)
    message["X-Secmail-Verified"] = sender
    message.set_content(text, cte="quoted-printable")
    for upload in uploads:
        maintype, _, subtype = upload.content_type.partition("/")
        message.add_attachment(
            upload.data, maintype=maintype, subtype=subtype, filename=upload.filename
        )
    return message.as_bytes()


def build_compose_code_mail(
    *,
    settings: Settings,
    recipient: str,
    to: str,
    code: str,
    minutes: int,
    date: datetime,
) -> Notification:
    """The code that proves to the portal that C{recipient} is the outsider's address."""
    return build_code_mail(
        settings=settings,
        recipient=recipient,
        code=code,
        minutes=minutes,
        message_id_domain=settings.gateway.hostname,
        date=date,
        purpose=f"writing a secure message to {to}",
        without_it="nobody can write in your name without it",
        subject="Your code for writing a secure message",
    )


def plain_address(text: str) -> str | None:
    """
    C{local@domain} (domain lower-cased) when C{text} is a plain address we accept (see
    L{portal_destination}: no route forms that a mail server could send elsewhere), else None.
    """
    if len(text) > MAX_ADDRESS_CHARS:
        return None
    try:
        return portal_destination(text, None)
    except DestinationError:
        return None


def client_key(host: str) -> str:
    """
    Whom a code order is counted against: the client's IPv4 address, or the /64 of an
    IPv6 one (one site's or one customer's usual share, which it can hop within); "" for
    anything else (not counted per client).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def code_limits(settings: Settings) -> CodeLimits:
    portal = settings.portal
    return CodeLimits(
        per_mailbox=portal.compose_codes_per_mailbox,
        per_client=portal.compose_codes_per_client,
        per_hour=portal.compose_codes_per_hour,
        per_day=portal.compose_codes_per_day,
    )


def build_lock_notice(*, settings: Settings, recipient: str, date: datetime) -> Notification:
    """The mail telling the owner of C{recipient} that codes for it stopped, and why."""
    return build_sender_notice(
        settings=settings,
        sender=recipient,
        subject="Codes for writing secure messages stopped for your address",
        paragraphs=[
            f"On the secure message page of {settings.gateway.hostname}, a wrong code "
            f"was typed {LOCK_AFTER} times to confirm the address {recipient}. To keep "
            "anyone from guessing a code and writing in your name, no codes are sent to "
            f"this address for the next {LOCK_TIME // 86400} days.",
            "If it was you, please write to the organisation in another way, or try "
            "again later. If not, someone else may have tried to use your address; no "
            "message was sent in your name.",
        ],
        message_id_domain=settings.gateway.hostname,
        date=date,
    )


# --- the app ------------------------------------------------------------------------------


class Compose:
    """
    @param csrf_key: HMAC key for the pre-sign-in form tokens (derive it for this use).
    @param run_in_thread: C{deferToThread}-like; uploads are parsed and the mail is
        built there, so a large form does not hold up the reactor.
    """

    app = Klein()

    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        compose_store: ComposeStore,
        clock: IReactorTime,
        csrf_key: bytes,
        on_commit: Callable[[], None] = lambda: None,
        run_in_thread: RunInThread = deferToThread,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = compose_store
        self.clock = clock
        self._csrf_key = csrf_key
        self.on_commit = on_commit
        self.run_in_thread = run_in_thread

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- choosing whom to write to, and proving one's own address ----------------------------

    # The mount point itself reaches this app with an empty path: no redirect to "/" for it.
    @app.route("/", methods=["GET"], strict_slashes=False)
    def directory(self, request: IRequest) -> bytes:
        """The form with a choice of the directory's addresses; changes nothing."""
        if not self.settings.portal.compose_directory:
            _ = self._t(request)
            use_link = _(
                "To write a secure message to someone here, use the link they gave you. "
                "It ends with their e-mail address, like {example}."
            )
            example = _e(self.settings.portal.url + MOUNT) + "/name@example.com"
            return self._page(
                request,
                _("Write a secure message"),
                f'<div class="card"><p>{use_link.format(example=example)}</p></div>',
            )
        return self._start_page(request, None, fixed=False)

    @app.route("/<path:address>", methods=["GET"])
    def direct(self, request: IRequest, address: str) -> bytes:
        """The form for one internal address (a direct link); changes nothing."""
        to = self._internal(address)
        if to is None:
            return self._no_such_address(request, address)
        return self._start_page(request, to, fixed=True)

    @app.route("/start", methods=["POST"])
    async def start(self, request: IRequest) -> bytes:
        """Mail a code to the address the outsider typed, and ask for it."""
        if not self._form_csrf_ok(request):
            return self._bad_form(request)
        to = self._internal(_single(request, b"to"))
        if to is None:
            return self._refused(request, _single(request, b"to"))
        _ = self._t(request)
        typed = _single(request, b"sender")
        sender = plain_address(typed)
        if sender is None:
            error = (
                _(
                    "{typed} is not an e-mail address we can send a code to. "
                    "Please type it as name@example.com."
                ).format(typed=typed)
                if typed.strip()
                else _("Please type your e-mail address.")
            )
            return self._start_page(request, to, typed, error, status=400)
        peer = getattr(request.getClientAddress(), "host", "")
        limits = code_limits(self.settings)
        code, refusal = await self.sessions.order_code(sender, self.now(), client_key(peer), limits)
        if code is None:
            return self._start_page(
                request,
                to,
                sender,
                self._code_refusal(_, refusal, sender, limits),
                status=403 if refusal == CodeRefusal.LOCKED else 429,
            )
        await self._mail_code(sender, to, code)
        return self._code_page(request, to, sender, None)

    @app.route("/verify", methods=["POST"])
    async def verify(self, request: IRequest) -> bytes:
        """The right code opens a session whose sender is the verified address."""
        if not self._form_csrf_ok(request):
            return self._bad_form(request)
        to = self._internal(_single(request, b"to"))
        if to is None:
            return self._refused(request, _single(request, b"to"))
        sender = plain_address(_single(request, b"sender"))
        if sender is None:
            return self._bad_form(request)
        _ = self._t(request)
        code = form_arg(request, b"code")
        if not re.fullmatch(r"\s*[0-9]{6}\s*", code):
            return self._code_page(request, to, sender, _("The code has 6 digits."), status=400)
        state = await self.sessions.check_code(sender, code, self.now(), self._lock_notice(sender))
        if state == CodeState.WRONG:
            return self._code_page(request, to, sender, _("That code is not right. Try again."))
        if state == CodeState.LOCKED_NOW:
            log.warn("D-Compose: codes for a mailbox locked after too many wrong codes")
            self.on_commit()
        if state in (CodeState.LOCKED, CodeState.LOCKED_NOW):
            return self._start_page(
                request,
                to,
                sender,
                self._code_refusal(_, CodeRefusal.LOCKED, sender, code_limits(self.settings)),
                status=403,
            )
        if state != CodeState.OK:
            return self._code_page(
                request,
                to,
                sender,
                _(
                    "That code no longer works (too many tries, or more than 10 minutes old). "
                    "Please ask for a new one."
                ),
            )
        old = cookie_value(request, SESSION_COOKIE)
        if old:
            await self.sessions.end_session(old, self.now())  # a new session id at every sign-in
        session_id = await self.sessions.create_session(sender, self.now())
        set_cookie(request, SESSION_COOKIE, session_id)
        return self._see_other(request, self._write_url(to))

    # --- writing -----------------------------------------------------------------------------

    @app.route("/write", methods=["GET"])
    async def write(self, request: IRequest) -> bytes:
        given = form_arg(request, b"to", MAX_ADDRESS_CHARS + 1)
        to = self._internal(given)
        session = await self._session(request)
        if session is None:
            return self._signed_out(request, to)
        if to is None:
            return self._no_such_address(request, given)
        return self._write_page(request, session, to)

    @app.route("/send", methods=["POST"])
    async def send(self, request: IRequest) -> bytes:
        """Seal the message and queue it for the internal mail server; to nobody else."""
        session = await self._session(request)
        if session is None:
            return self._signed_out(request, None)
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        request.content.seek(0)
        body = request.content.read()
        form: SentForm = await self.run_in_thread(parse_form, content_type, body)
        # One message per form: the id comes from the form, so a second click (or a reload
        # that posts again) finds the first one's event instead of sending it twice.
        message_id = once_id(
            self._csrf_key, f"compose-send:{session.address}", form.one("form") or ""
        )
        if not same_secret(form.one("csrf") or "", session.csrf) or message_id is None:
            return self._bad_form(request)
        given = form.one("to")
        to = self._internal(given or "")
        if to is None:
            shown = clean_text(given if given is not None else "(none, or several)", 100)
            await self.sessions.add_event(
                session.address, "compose refused", f"not an internal address: {shown}", self.now()
            )
            return self._refused(request, given or "")
        subject = clean_text(form.one("subject") or "", MAX_SUBJECT_CHARS)
        text = form.one("text") or ""
        uploads = form.uploads
        size = len(text.encode("utf-8")) + sum(len(u.data) for u in uploads)
        limit = self.settings.portal.max_upload_size
        _ = self._t(request)
        if size > limit:
            error = _(
                "The message and its attachments come to {size}; at most "
                "{limit} can be sent. Please leave out some attachments, "
                "or send them in more than one message."
            ).format(size=_megabytes(size), limit=_megabytes(limit))
            return self._write_page(request, session, to, subject, text, error, status=413)
        if not text.strip() and not uploads:
            return self._write_page(
                request, session, to, subject, text, _("Please write a message."), status=400
            )
        if await self.store.has_event(message_id, "composed"):
            return self._already_sent(request, session)
        now = self.now()
        content: bytes = await self.run_in_thread(
            lambda: build_compose_mail(
                sender=session.address,
                reply_to=session.address + self.settings.secure.extension,
                to=to,
                subject=subject or "(no subject)",
                text=text,
                uploads=uploads,
                message_id_domain=self.settings.gateway.hostname,
                date=datetime.fromtimestamp(now, UTC),
            )
        )
        domain = to.rpartition("@")[2]
        bounce = self.settings.gateway.bounce_address
        detail = (
            f"by {session.address} (address proved by e-mail code) to {to}, "
            f"{len(uploads)} attachment(s), {size} bytes"
        )
        committed = await commit_once(
            self.store,
            [
                NewMessage(
                    content=SealedBytes(self.store.master, message_id, content),
                    kind="compose",
                    sender=bounce,
                    deliveries=[
                        NewDelivery(
                            kind="compose",
                            sender=bounce,
                            recipients=(to,),
                            route=str(self.settings.routes.for_domain(domain)),
                            domain=domain,
                            notify="",
                            about=message_id,
                        )
                    ],
                    events=[(None, "composed", detail)],
                )
            ],
            now,
            message_id,
            "composed",
        )
        if not committed:
            return self._already_sent(request, session)  # the other click won
        await self.sessions.add_event(session.address, "composed", f"{message_id} to {to}", now)
        self.on_commit()
        names = "".join(f"<li>{_e(u.filename)}</li>" for u in uploads)
        files = f'<p>{_("Attached:")}</p><ul class="files">{names}</ul>' if uploads else ""
        on_its_way = _("Your message to {to} is on its way. Replies will come to {sender}.").format(
            to=_e(to), sender=_e(session.address)
        )
        return self._page(
            request,
            _("Message sent"),
            f'<div class="card"><p>{on_its_way}</p>{files}'
            f'<p class="actions"><a class="button" href="{_e(self._write_url(to))}">'
            f"{_('Write another message')}</a></p></div>" + self._sign_out_form(_, session),
        )

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        session_id = cookie_value(request, SESSION_COOKIE)
        session = await self._session(request)
        if session is not None and session_id:
            if not same_secret(form_arg(request, b"csrf"), session.csrf):
                return self._bad_form(request)
            await self.sessions.end_session(session_id, self.now())
        set_cookie(request, SESSION_COOKIE, "", max_age=0)
        _ = self._t(request)
        return self._page(
            request, _("Signed out"), f'<div class="card"><p>{_("You are signed out.")}</p></div>'
        )

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(HTTPException):
            error = failure.value
            for name, value in error.get_response().headers:
                if name in ("Location", "Allow"):
                    request.setHeader(name.encode("ascii"), value.encode("ascii", "replace"))
            return self._error(request, error.code or 404, "compose_page_not_found")
        log.failure("Compose request failed", failure)
        return self._error(request, 500, "compose_temporary_problem")

    # --- helpers -----------------------------------------------------------------------------

    def _t(self, request: IRequest) -> Translate:
        return translation(request, self.settings)

    def _internal(self, text: str) -> str | None:
        """C{text} as an address we may write to (a plain one in an incoming domain), else None."""
        if len(text) > MAX_ADDRESS_CHARS:
            return None
        try:
            return portal_destination(text, self.settings.routes.is_incoming)
        except DestinationError:
            return None

    async def _session(self, request: IRequest) -> ComposeSession | None:
        session_id = cookie_value(request, SESSION_COOKIE)
        if not session_id:
            return None
        return await self.sessions.session(session_id, self.now())

    async def _mail_code(self, sender: str, to: str, code: str) -> None:
        mail = build_compose_code_mail(
            settings=self.settings,
            recipient=sender,
            to=to,
            code=code,
            minutes=CODE_LIFETIME // 60,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        await self.store.commit(
            [
                system_mail(
                    self.settings,
                    self.store.master,
                    kind="code",
                    sender=mail.sender,
                    to=sender,
                    content=mail.content,
                    # Its delivery is recorded on the outsider's trail.
                    about=trail_id(sender),
                )
            ],
            self.now(),
        )
        self.on_commit()

    def _code_refusal(
        self, _: Translate, refusal: str | None, sender: str, limits: CodeLimits
    ) -> str:
        """Why no code was sent, in words, and what to do."""
        if refusal == CodeRefusal.LOCKED:
            return _(
                "A wrong code was typed too many times for {address}, so no more codes are "
                "sent to it for {days} days. Its owner has been told by e-mail."
            ).format(address=sender, days=LOCK_TIME // 86400)
        if refusal == CodeRefusal.MAILBOX:
            return _(
                "{count} codes have been sent to {address} in the last 24 hours, "
                "which is as many as we send. Please use the newest code you received, "
                "or try again tomorrow."
            ).format(count=limits.per_mailbox, address=sender)
        if refusal == CodeRefusal.CLIENT:
            return _(
                "Many codes have been asked for from your network in the last hour. "
                "Please use the newest code you received, or try again in an hour."
            )
        return _(
            "This page has sent as many codes as it may for now. Please try again "
            "in an hour, or later today."
        )

    def _lock_notice(self, sender: str) -> NewMessage:
        """The mail telling the owner of C{sender} that codes for it stopped."""
        mail = build_lock_notice(
            settings=self.settings,
            recipient=sender,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        return system_mail(
            self.settings,
            self.store.master,
            kind="notice",
            sender=mail.sender,
            to=sender,
            content=mail.content,
            about=trail_id(sender),
        )

    def _form_csrf(self, value: str) -> str:
        return hmac.new(self._csrf_key, b"compose-form:" + value.encode(), "sha256").hexdigest()

    def _form_token(self, request: IRequest) -> str:
        """The CSRF value for a pre-sign-in form; (re)sets the form cookie it belongs to."""
        value = cookie_value(request, FORM_COOKIE) or secrets.token_urlsafe(24)
        set_cookie(request, FORM_COOKIE, value, max_age=FORM_COOKIE_AGE)
        return self._form_csrf(value)

    def _form_csrf_ok(self, request: IRequest) -> bool:
        value = cookie_value(request, FORM_COOKIE)
        if not value:
            return False
        return same_secret(form_arg(request, b"csrf"), self._form_csrf(value))

    def _write_url(self, to: str) -> str:
        return f"{MOUNT}/write?to={quote(to, safe='@')}"

    def _start_page(
        self,
        request: IRequest,
        to: str | None,
        sender: str = "",
        error: str | None = None,
        status: int = 200,
        fixed: bool | None = None,
    ) -> bytes:
        """The first form; C{fixed}: the address is not to be chosen (default: when not listed)."""
        request.setResponseCode(status)
        _ = self._t(request)
        directory = self.settings.portal.compose_directory
        if fixed is None:
            fixed = to not in directory
        if to is None or not fixed:
            options = "".join(
                f'<option value="{_e(a)}"{" selected" if a == to else ""}>{_e(a)}</option>'
                for a in directory
            )
            recipient = (
                f'<label for="to">{_("To")}</label>'
                f'<p><select id="to" name="to" required>{options}</select></p>'
            )
        else:
            recipient = (
                f"<dl><dt>{_('To')}</dt><dd>{_e(to)}</dd></dl>"
                f'<input type="hidden" name="to" value="{_e(to)}">'
            )
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        body = (
            f'<form method="post" action="{MOUNT}/start" class="card">{problem}'
            f'<input type="hidden" name="csrf" value="{self._form_token(request)}">'
            f"{recipient}"
            f'<label for="sender">{_("Your e-mail address")}</label>'
            f'<p><input type="email" id="sender" name="sender" value="{_e(sender)}" '
            f'autocomplete="email" maxlength="{MAX_ADDRESS_CHARS}" required></p>'
            '<p class="note">'
            + _(
                "We will send a code to this address to make sure it is yours. "
                "The reply to your message will come to it."
            )
            + "</p>"
            f'<button type="submit">{_("Send me a code")}</button></form>'
        )
        return self._page(request, _("Write a secure message"), body)

    def _code_page(
        self, request: IRequest, to: str, sender: str, error: str | None, status: int = 200
    ) -> bytes:
        request.setResponseCode(status)
        _ = self._t(request)
        csrf = self._form_token(request)
        hidden = (
            f'<input type="hidden" name="csrf" value="{csrf}">'
            f'<input type="hidden" name="to" value="{_e(to)}">'
            f'<input type="hidden" name="sender" value="{_e(sender)}">'
        )
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        sent_to = _("We sent a 6-digit code to {address}. It works for {minutes} minutes.")
        body = (
            f'<form method="post" action="{MOUNT}/verify" class="card">{problem}'
            f"<p>{sent_to.format(address=_e(sender), minutes=CODE_LIFETIME // 60)}</p>{hidden}"
            f'<label for="code">{_("Code")}</label>'
            '<input type="text" id="code" name="code" inputmode="numeric" '
            'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required>'
            f' <button type="submit">{_("Continue")}</button></form>'
            f'<form method="post" action="{MOUNT}/start" class="card">{hidden}'
            f"<p>{_('No code? Check the spam folder, or ask for a new one.')}</p>"
            f'<button type="submit" class="secondary">{_("Send a new code")}</button></form>'
        )
        return self._page(request, _("Confirm your e-mail address"), body)

    def _write_page(
        self,
        request: IRequest,
        session: ComposeSession,
        to: str,
        subject: str = "",
        text: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> bytes:
        request.setResponseCode(status)
        _ = self._t(request)
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        limit = _megabytes(self.settings.portal.max_upload_size)
        confirmed = _("{address} (confirmed)").format(address=_e(session.address))
        together = _("Message and attachments together: at most {limit}.").format(limit=limit)
        body = (
            f'<form method="post" action="{MOUNT}/send" enctype="multipart/form-data" '
            f'class="card">{problem}'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f"{form_id_field()}"
            f'<input type="hidden" name="to" value="{_e(to)}">'
            f"<dl><dt>{_('From')}</dt><dd>{confirmed}</dd>"
            f"<dt>{_('To')}</dt><dd>{_e(to)}</dd></dl>"
            f'<p><label for="subject">{_("Subject")}</label>'
            f'<input type="text" id="subject" name="subject" value="{_e(subject)}" '
            f'maxlength="{MAX_SUBJECT_CHARS}"></p>'
            f'<p><label for="text">{_("Message")}</label>'
            f'<textarea id="text" name="text" rows="12" cols="60">{_e(text)}</textarea></p>'
            f'<p><label for="attachments">{_("Attachments")}</label>'
            '<input type="file" id="attachments" name="attachment" multiple></p>'
            f'<p class="note">{together}</p>'
            f'<button type="submit">{_("Send securely")}</button></form>'
            + self._sign_out_form(_, session)
        )
        return self._page(request, _("Write a secure message"), body)

    def _already_sent(self, request: IRequest, session: ComposeSession) -> bytes:
        _ = self._t(request)
        return self._page(
            request,
            _("Message sent"),
            f'<div class="card"><p>{_("This message has already been sent.")}</p></div>'
            + self._sign_out_form(_, session),
        )

    def _sign_out_form(self, _: Translate, session: ComposeSession) -> str:
        return (
            f'<form method="post" action="{MOUNT}/logout" class="card actions">'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f'<button type="submit" class="secondary">{_("Sign out")}</button></form>'
        )

    def _see_other(self, request: IRequest, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("ascii"))
        set_security_headers(request)
        return b""

    def _page(self, request: IRequest, title: str, body: str) -> bytes:
        return render_page(request, self.settings, title, body)

    def _error(self, request: IRequest, code: int, name: str, **context: Any) -> bytes:
        return error_page(request, self.settings, code, name, mount=MOUNT, **context)

    def _no_such_address(self, request: IRequest, address: str = "") -> bytes:
        named = clean_text(address, 100) if address.strip() else ""
        return self._error(request, 404, "compose_refused_address", address=named, refused=False)

    def _refused(self, request: IRequest, address: str = "") -> bytes:
        named = clean_text(address, 100) if address.strip() else ""
        return self._error(request, 400, "compose_refused_address", address=named, refused=True)

    def _signed_out(self, request: IRequest, to: str | None) -> bytes:
        again = f"{MOUNT}/{quote(to, safe='@')}" if to else MOUNT
        return self._error(request, 401, "compose_signed_out", again=again)

    def _bad_form(self, request: IRequest) -> bytes:
        return self._error(request, 403, "compose_bad_form")


def _single(request: IRequest, name: bytes) -> str:
    """A form field given exactly once, else "" (which no check accepts)."""
    values = (request.args or {}).get(name) or []
    if len(values) != 1:
        return ""
    return values[0].decode("utf-8", "replace")[: MAX_ADDRESS_CHARS + 1]


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
