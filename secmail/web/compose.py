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

import re
from collections.abc import Callable
from datetime import UTC, datetime

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from secmail import message_log
from secmail.address import DestinationError, portal_destination
from secmail.config import Settings
from secmail.config.cluster import LiveSettings
from secmail.letters import code_message, routed_mail
from secmail.monitoring import counting
from secmail.notify import clean_text
from secmail.store.compose import (
    CODE_LIFETIME,
    CodeRefusal,
    CodeState,
    ComposeSession,
    ComposeStore,
    trail_id,
)
from secmail.store.messages import MessageStore, NewDelivery, NewMessage
from secmail.store.spool import RunInThread, SealedBytes
from secmail.web.compose_mail import (
    MAX_ADDRESS_CHARS,
    build_compose_code_mail,
    build_compose_mail,
    build_lock_notice,
    client_key,
    code_limits,
    parse_form,
    plain_address,
)
from secmail.web.compose_pages import MAX_SUBJECT_CHARS, MOUNT, ComposePages
from secmail.web.errors import add_error_handling
from secmail.web.forms import (
    SubmittedForm,
    commit_once,
    cookie_value,
    form_arg,
    once_id,
    same_secret,
    set_cookie,
)

log = Logger()

SESSION_COOKIE = b"__Host-secmail-compose"


# --- the app ------------------------------------------------------------------------------


class Compose(ComposePages):
    """
    @param csrf_key: HMAC key for the pre-sign-in form tokens (derive it for this use).
    @param run_in_thread: C{deferToThread}-like; uploads are parsed and the mail is
        built there, so a large form does not hold up the reactor.
    """

    app = Klein()

    def __init__(
        self,
        settings: Settings | LiveSettings,
        store: MessageStore,
        compose_store: ComposeStore,
        clock: IReactorTime,
        csrf_key: bytes,
        on_commit: Callable[[], None] = lambda: None,
        run_in_thread: RunInThread = deferToThread,
    ) -> None:
        self.follow(settings)
        self.store = store
        self.sessions = compose_store
        self.clock = clock
        self._csrf_key = csrf_key
        self.on_commit = on_commit
        self.run_in_thread = run_in_thread

    # --- choosing whom to write to, and proving one's own address ----------------------------

    # The mount point itself reaches this app with an empty path: no redirect to "/" for it.
    @app.route("/", methods=["GET"], strict_slashes=False)
    def directory(self, request: IRequest) -> bytes:
        """The form with a choice of the directory's addresses; changes nothing."""
        if not self.settings.portal.compose_directory:
            return self._template(
                request,
                "compose/use_link.html",
                example=self.settings.portal.url + MOUNT + "/name@example.com",
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
        limits = code_limits(self.settings.portal)
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
        counting.count("portal_codes", "compose")
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
        if state in (CodeState.WRONG, CodeState.LOCKED_NOW):
            counting.count("portal_code_failures", "compose")
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
                self._code_refusal(
                    _, CodeRefusal.LOCKED, sender, code_limits(self.settings.portal)
                ),
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
        form: SubmittedForm = await self.run_in_thread(parse_form, content_type, body)
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
        uploads = form.uploads("attachment")
        size = len(text.encode("utf-8")) + sum(len(u.data) for u in uploads)
        limit = self.settings.portal.max_upload_size
        _ = self._t(request)
        if size > limit:
            error = _(
                "The message and its attachments come to {size}; at most "
                "{limit} can be sent. Please leave out some attachments, "
                "or send them in more than one message."
            ).format(size=self._size(request, size), limit=self._size(request, limit, limit=True))
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
        composed = [
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
        ]
        committed = await commit_once(self.store, composed, now, message_id, "composed")
        if not committed:
            return self._already_sent(request, session)  # the other click won
        message_log.accepted_messages(
            composed,
            peer=getattr(request.getClientAddress(), "host", "unknown"),
            sender=session.address,
            via="D-Compose",
        )
        await self.sessions.add_event(session.address, "composed", f"{message_id} to {to}", now)
        self.on_commit()
        return self._template(
            request,
            "compose/sent.html",
            already=False,
            csrf=session.csrf,
            address=session.address,
            to=to,
            files=[u.filename for u in uploads],
            again=self._write_url(to),
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
        return self._template(request, "compose/signed_out.html")

    # --- helpers -----------------------------------------------------------------------------

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
            identity=self.settings.identity,
            recipient=sender,
            to=to,
            code=code,
            minutes=CODE_LIFETIME // 60,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        # Its delivery is recorded on the outsider's trail.
        message = code_message(self.settings.routes, self.store.master, mail, trail_id(sender))
        await self.store.commit([message], self.now())
        self.on_commit()

    def _lock_notice(self, sender: str) -> NewMessage:
        """The mail telling the owner of C{sender} that codes for it stopped."""
        mail = build_lock_notice(
            identity=self.settings.identity,
            recipient=sender,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        return routed_mail(
            self.settings.routes,
            self.store.master,
            kind="notice",
            sender=mail.sender,
            to=sender,
            content=mail.content,
            about=trail_id(sender),
        )


def _single(request: IRequest, name: bytes) -> str:
    """A form field given exactly once, else "" (which no check accepts)."""
    values = (request.args or {}).get(name) or []
    if len(values) != 1:
        return ""
    return values[0].decode("utf-8", "replace")[: MAX_ADDRESS_CHARS + 1]


add_error_handling(
    Compose.app,
    log_as="Compose request failed",
    page_not_found="compose_page_not_found",
    temporary="compose_temporary_problem",
    mount=MOUNT,
)
