# -*- test-case-name: tests.test_reply -*-
"""
Replying from the reading page: the Reply (and Reply all) and Forward forms (the template
C{parts/reply_forms.html}), the route they post to (one mail per form:
L{secmail.web.forms.once_id}), and the pages of what was sent or not (C{sent.html},
C{not_sent.html}). The mails themselves are built by L{secmail.web.reply}.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from twisted.web.iweb import IRequest

from secmail import message_log
from secmail.store.messages import Envelope
from secmail.store.portal import Session
from secmail.store.rows import short_id
from secmail.web import errors, reply
from secmail.web.access import PortalBase, signed_in
from secmail.web.formats import size_text
from secmail.web.forms import (
    FormError,
    SubmittedForm,
    commit_once,
    new_form_id,
    once_id,
    same_secret,
    submitted_form,
)
from secmail.web.i18n import request_language
from secmail.web.reply_letters import reply_messages

app = PortalBase.app


@dataclass(frozen=True)
class ReplyForms:
    """What C{parts/reply_forms.html} shows: the forms' tokens, the choices, what was typed."""

    csrf: str
    #: One id for both forms: the page offers one reply, whichever button sends it.
    form_id: str
    can_reply: bool
    can_reply_all: bool
    #: The mode of the form sent before ("reply", "reply-all", "forward"), and what it said.
    mode: str
    text: str
    to: str
    #: At most this much (as text) goes in one reply; the organisation's domains.
    limit: str
    domains: str


class ReplyRoutes(PortalBase):
    """C{/read/reply} and C{/read/sent}, and the forms the reading page shows."""

    def _size(self, request: IRequest, size: int, limit: bool = False) -> str:
        """A size the one way every page writes it (L{secmail.web.formats.size_text})."""
        return size_text(size, request_language(request, self.frame.languages), limit=limit)

    @app.route("/read/reply", methods=["POST"])
    @signed_in(letter=False)
    async def send_reply(self, request: IRequest, session: Session) -> bytes:
        """Reply, reply all or forward: mail to the organisation, secure letters to outsiders."""
        try:
            form = submitted_form(request)
        except FormError:
            return self._bad_form(request)
        # One mail per form: its id comes from the form, so a second click finds the first
        # one's "written" event (events outlive delivered mail) and sends nothing more.
        reply_id = once_id(self._csrf_key, f"reply:{session.envelope_id}", form.text("form"))
        if not same_secret(form.text("csrf"), session.csrf) or reply_id is None:
            return self._bad_form(request)
        if await self.store.has_event(reply_id, "written"):
            return self._to_sent_page(request)
        envelope = await self.store.envelope_by_id(session.envelope_id)
        raw = await self._raw(session)
        if envelope is None or raw is None:
            return errors.show(request, self.frame, errors.GONE)
        mode, text, to = form.text("mode"), form.text("text"), form.text("to")
        uploads = form.uploads("files")
        size = len(text.encode("utf-8")) + sum(len(u.data) for u in uploads)
        limit = self.settings.portal.max_upload_size
        if size > limit:
            problem = self._t(request)(
                "Your message and files come to {size}; at most {limit} can be "
                "sent at once. Please attach fewer or smaller files."
            ).format(size=self._size(request, size), limit=self._size(request, limit, limit=True))
            return await self._not_sent(request, session, raw, envelope, form, problem, 413)
        now = self.now()
        date = datetime.fromtimestamp(self.clock.seconds(), UTC)
        try:
            mail: reply.ReplyMail = await self._render(
                session,
                lambda: reply.build_reply(
                    original=raw,
                    mode=mode,
                    reader=envelope.recipient,
                    reader_original=envelope.original,
                    text=text,
                    uploads=uploads,
                    forward_to=to,
                    routes=self.settings.routes,
                    secure=self.settings.secure,
                    identity=self.settings.identity,
                    date=date,
                ),
            )
        except reply.ReplyError as e:
            return await self._not_sent(request, session, raw, envelope, form, str(e), 400)
        messages = reply_messages(
            mail,
            texts=self.settings.notification_texts,
            routes=self.settings.routes,
            master=self.store.master,
            reader=envelope.recipient,
            about=session.message_id,
            date=date,
            message_id=reply_id,
        )
        if not await commit_once(self.store, messages, now, reply_id, "written"):
            return self._to_sent_page(request)  # the other click won
        message_log.accepted_messages(
            messages,
            peer=getattr(request.getClientAddress(), "host", "unknown"),
            sender=envelope.recipient,
            via=f"the portal ({mail.mode} to {short_id(session.message_id)})",
        )
        self.on_commit()
        kind = "forwarded" if mail.mode == "forward" else "replied"
        await self.store.add_event(session.message_id, session.envelope_id, kind, mail.summary, now)
        return self._to_sent_page(request)

    def _to_sent_page(self, request: IRequest) -> bytes:
        """To a page of its own (303), so that reloading it cannot send the mail again."""
        return self._see_other(request, b"/read/sent")

    @app.route("/read/sent", methods=["GET"])
    @signed_in(letter=False)
    async def sent(self, request: IRequest, session: Session) -> bytes:
        """What the reader's last reply or forward from this letter went out as."""
        sent = [
            detail
            for _, kind, envelope_id, detail in await self.store.events(session.message_id)
            if envelope_id == session.envelope_id and kind in ("replied", "forwarded")
        ]
        return self._template(request, "sent.html", sent=sent[-1] if sent else None)

    def _reply_forms(
        self,
        request: IRequest,
        csrf: str,
        choices: tuple[bool, bool],
        mode: str = "",
        text: str = "",
        to: str = "",
    ) -> ReplyForms:
        """What the reading page's Reply (and Reply all) and Forward forms show.

        C{choices}: whether the reader can reply, and reply all (L{reply.reply_choices})."""
        can_reply, can_reply_all = choices
        return ReplyForms(
            csrf=csrf,
            form_id=new_form_id(),
            can_reply=can_reply,
            can_reply_all=can_reply_all,
            mode=mode,
            text=text,
            to=to,
            limit=self._size(request, self.settings.portal.max_upload_size, limit=True),
            domains=reply.organisation(self.settings.routes),
        )

    async def _not_sent(
        self,
        request: IRequest,
        session: Session,
        raw: bytes,
        envelope: Envelope,
        form: SubmittedForm,
        problem: str,
        status: int,
    ) -> bytes:
        """The problem, in words, and the forms again with what the reader typed."""
        settings = self.settings
        choices = await self._render(
            session,
            reply.reply_choices,
            raw,
            envelope.recipient,
            settings.routes,
            settings.secure,
            settings.identity,
        )
        request.setResponseCode(status)
        return self._template(
            request,
            "not_sent.html",
            problem=problem,
            files_dropped=bool(form.uploads("files")),
            forms=self._reply_forms(
                request,
                session.csrf,
                choices,
                form.text("mode"),
                form.text("text"),
                form.text("to", 2000),
            ),
        )
