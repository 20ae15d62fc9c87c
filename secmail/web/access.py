# -*- test-case-name: tests.test_portal -*-
"""
How a reader reaches a letter: the link's token gives its envelope, a sign-in gives a
session cookie, the session gives the letter. L{PortalBase} holds the portal's
collaborators and these look-ups; a route says what it needs with one decorator
(L{letter_link}: the envelope behind the link, with its form's CSRF token checked;
L{signed_in}: the session, and the letter's plaintext), and the decorator answers the
page for what is missing (the model: Tahoe-LAFS's C{_authorized_route}).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from secmail.config import Settings
from secmail.config.cluster import LiveSettings
from secmail.crypto import IntegrityError
from secmail.letters import routed_mail
from secmail.monitoring import counting
from secmail.notify import Notification
from secmail.store.messages import Envelope, MessageStore, NewMessage
from secmail.store.portal import PortalStore, Session
from secmail.store.sms import SmsStore
from secmail.store.spool import RunInThread
from secmail.web import errors, render
from secmail.web.errors import CannotShow
from secmail.web.forms import cookie_value, form_arg, same_secret, set_cookie
from secmail.web.i18n import Translate
from secmail.web.layout import (
    DOWNLOAD_CSP,
    PAGE_CSP,
    PageFrame,
    set_security_headers,
    template_page,
    translation,
)

log = Logger()
T = TypeVar("T")

SESSION_COOKIE = b"__Host-secmail-session"
BROWSER_COOKIE = b"__Host-secmail-browser"
BROWSER_COOKIE_AGE = 365 * 24 * 3600
#: The state of a letter its sender withdrew (L{secmail.store.trace.MessageTrace.revoke}).
REVOKED = "revoked"


class LiveFrame:
    """The L{PageFrame} of the settings now, made again only when they change."""

    def __init__(self, live: LiveSettings) -> None:
        self.live = live
        self._made_of: Settings | None = None
        self._frame: PageFrame | None = None

    @property
    def frame(self) -> PageFrame:
        settings = self.live.current
        if self._frame is None or self._made_of is not settings:
            self._frame = PageFrame(
                settings.branding, settings.gateway.hostname, settings.portal.languages
            )
            self._made_of = settings
        return self._frame


class FollowsSettings:
    """
    What the portal and D-Compose share: the settings now (a page reads them as it is made, so
    a change applies at once), the page frame made of them, and the clock's time.
    """

    clock: IReactorTime

    def follow(self, settings: Settings | LiveSettings) -> None:
        self.live = settings if isinstance(settings, LiveSettings) else LiveSettings(settings)
        self._frame = LiveFrame(self.live)

    @property
    def settings(self) -> Settings:
        return self.live.current

    @property
    def frame(self) -> PageFrame:
        """What every page's frame shows, from the settings now."""
        return self._frame.frame

    def now(self) -> int:
        return int(self.clock.seconds())


class PortalBase(FollowsSettings):
    """The portal's collaborators and what every route module uses (see L{secmail.web.portal})."""

    app = Klein()

    def __init__(
        self,
        settings: Settings | LiveSettings,
        store: MessageStore,
        portal_store: PortalStore,
        clock: IReactorTime,
        csrf_key: bytes,
        on_commit: Callable[[], None] = lambda: None,
        compose: IResource | None = None,
        run_in_thread: RunInThread = deferToThread,
        sms: SmsStore | None = None,
        on_sms: Callable[[], None] = lambda: None,
    ) -> None:
        self.follow(settings)
        self.sms = sms
        self.on_sms = on_sms
        self.compose = compose
        self.run_in_thread = run_in_thread
        self.store = store
        self.sessions = portal_store
        self.clock = clock
        self._csrf_key = csrf_key
        self.on_commit = on_commit

    def _date(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    # --- the letter behind a link, and behind a session ---------------------------------

    async def _envelope(self, request: IRequest, token: str) -> Envelope | None:
        """
        The letter behind a link. A secure letter to an address in the phone directory is
        a registered letter (PIN by SMS to the directory's number), also one sent before
        the address was added.
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", token):
            return None
        envelope = await self.store.envelope_by_token(token)
        if envelope is not None and envelope.level == "letter" and self.sms is not None:
            number = await self.sms.phone_for(envelope.recipient)
            if number is not None:
                envelope = replace(envelope, level="registered", phone=number)
        return envelope

    def _form_csrf(self, token: str) -> str:
        token_hash = hashlib.sha256(token.encode("ascii", "replace")).digest()
        return hmac.new(self._csrf_key, b"link-form:" + token_hash, "sha256").hexdigest()

    def _form_csrf_ok(self, request: IRequest, token: str) -> bool:
        return same_secret(form_arg(request, b"csrf"), self._form_csrf(token))

    async def _session(self, request: IRequest) -> Session | None:
        session_id = cookie_value(request, SESSION_COOKIE)
        if not session_id:
            return None
        return await self.sessions.session(session_id, self.now())

    async def _sign_in(self, request: IRequest, envelope: Envelope, how: str) -> bytes:
        old = cookie_value(request, SESSION_COOKIE)
        if old:
            await self.sessions.end_session(old)  # a new session id at every sign-in
        session_id = await self.sessions.create_session(envelope.id, self.now(), how)
        counting.count("portal_opens")
        set_cookie(request, SESSION_COOKIE, session_id)
        return self._see_other(request, b"/read")

    async def _raw(self, session: Session) -> bytes | None:
        """The letter's plaintext, or None if it is gone.

        @raise CannotShow: the stored ciphertext fails authentication (altered on disk or in
            the database). Recorded on the message once, as a "damaged" event.
        """
        try:
            return await self.store.read_all(session.message_id)
        except LookupError:
            return None
        except IntegrityError as e:
            log.error(
                "Message {id} is damaged, not shown: {problem}", id=session.message_id, problem=e
            )
            if not await self.store.has_event(session.message_id, "damaged"):
                await self.store.add_event(
                    session.message_id, session.envelope_id, "damaged", str(e), self.now()
                )
            raise CannotShow("damaged") from None

    async def _render(self, session: Session, work: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Parse and render the letter on the thread pool: a message can be a lot of work.

        @raise CannotShow: the message is beyond the parser's limits.
        """
        try:
            result: T = await self.run_in_thread(work, *args, **kw)
        except render.MessageTooComplex as e:
            log.warn(
                "Message {id} is too complex to show: {reason}", id=session.message_id, reason=e
            )
            raise CannotShow("complex") from None
        return result

    def _gateway_mail(self, envelope: Envelope, mail: Notification | None) -> NewMessage | None:
        """A notice to a letter's sender, ready to commit; events go on the letter."""
        if mail is None:
            return None
        return routed_mail(
            self.settings.routes,
            self.store.master,
            kind="notice",
            sender=mail.sender,
            to=mail.recipient,
            content=mail.content,
            about=envelope.message_id,
        )

    # --- answers ---------------------------------------------------------------------------

    def _t(self, request: IRequest) -> Translate:
        return translation(request, self.frame.languages)

    def _headers(self, request: IRequest, csp: bytes = PAGE_CSP) -> None:
        set_security_headers(request, csp)

    def _template(self, request: IRequest, name: str, **values: Any) -> bytes:
        """The page C{web/templates/<name>} with C{values}, in the reader's language."""
        return template_page(request, self.frame, name, **values)

    def _see_other(self, request: IRequest, location: bytes) -> bytes:
        """To a page of its own (303): reloading it posts nothing again."""
        request.setResponseCode(303)
        request.setHeader(b"Location", location)
        self._headers(request)
        return b""

    def _download(
        self,
        request: IRequest,
        data: bytes,
        filename: str,
        content_type: bytes = b"application/octet-stream",
    ) -> bytes:
        self._headers(request, csp=DOWNLOAD_CSP)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(
            b"Content-Disposition", render.content_disposition(filename).encode("ascii")
        )
        return data

    def _bad_form(self, request: IRequest) -> bytes:
        return errors.show(request, self.frame, errors.BAD_FORM)

    def _locked(self, request: IRequest, envelope: Envelope) -> bytes:
        return errors.locked(request, self.frame, envelope)


LinkRoute = Callable[[Any, IRequest, str, Envelope], Awaitable[bytes]]
ReadingRoute = Callable[..., Awaitable[bytes]]


def letter_link(
    *, csrf: bool = True, level: str | None = None
) -> Callable[[LinkRoute], Callable[[Any, IRequest, str], Awaitable[bytes]]]:
    """
    A route under C{/m/<token>} that needs the letter behind the link (else 404), and
    with C{csrf} a form from the page the link showed (else 403), and with C{level} a
    letter of that level (else 403). The route gets the envelope after the token.
    """

    def decorate(route: LinkRoute) -> Callable[[Any, IRequest, str], Awaitable[bytes]]:
        @functools.wraps(route)
        async def checked(self: PortalBase, request: IRequest, token: str) -> bytes:
            envelope = await self._envelope(request, token)
            if envelope is None:
                return errors.show(request, self.frame, errors.NOT_FOUND)
            if envelope.state == REVOKED:
                return errors.show(request, self.frame, errors.WITHDRAWN)
            if csrf and not self._form_csrf_ok(request, token):
                return self._bad_form(request)
            if level is not None and envelope.level != level:
                return self._bad_form(request)
            return await route(self, request, token, envelope)

        return checked

    return decorate


def signed_in(*, letter: bool = True) -> Callable[[ReadingRoute], ReadingRoute]:
    """
    A route that needs a session (else 401, "open the link again"); with C{letter}, the
    letter's plaintext too (else 410, deleted). The route gets the session, and the
    plaintext, before the route's own arguments.
    """

    def decorate(route: ReadingRoute) -> ReadingRoute:
        @functools.wraps(route)
        async def checked(self: PortalBase, request: IRequest, **kw: Any) -> bytes:
            session = await self._session(request)
            if session is None:
                return errors.show(request, self.frame, errors.SIGNED_OUT)
            if not letter:
                return await route(self, request, session, **kw)
            # Revoking ends the letter's sessions; this is for one begun or open meanwhile
            # (the content stays while another recipient may still read it).
            if session.state == REVOKED:
                return errors.show(request, self.frame, errors.WITHDRAWN)
            raw = await self._raw(session)
            if raw is None:
                return errors.show(request, self.frame, errors.GONE)
            return await route(self, request, session, raw, **kw)

        return checked

    return decorate
