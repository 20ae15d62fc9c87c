# -*- test-case-name: tests.test_reply -*-
"""
Replying from the reading page: the Reply (and Reply all) and Forward forms, the route
they post to (one mail per form: L{secmail.web.forms.once_id}), and the page of what was sent.
The mails themselves are built by L{secmail.web.reply}.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.web.iweb import IRequest

from secmail.store.messages import Envelope
from secmail.store.portal import Session
from secmail.web import errors, reply
from secmail.web.access import PortalBase, signed_in
from secmail.web.forms import (
    FormError,
    SubmittedForm,
    commit_once,
    escape,
    form_id_field,
    once_id,
    same_secret,
    submitted_form,
)
from secmail.web.i18n import Translate
from secmail.web.reply_letters import reply_messages
from secmail.web.site import size_text

app = PortalBase.app


class ReplyRoutes(PortalBase):
    """C{/read/reply} and C{/read/sent}, and the forms the reading page shows."""

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
            return errors.show(request, self.settings, errors.GONE)
        mode, text, to = form.text("mode"), form.text("text"), form.text("to")
        uploads = form.uploads("files")
        size = len(text.encode("utf-8")) + sum(len(u.data) for u in uploads)
        limit = self.settings.portal.max_upload_size
        if size > limit:
            problem = self._t(request)(
                "Your message and files come to {size}; at most {limit} can be "
                "sent at once. Please attach fewer or smaller files."
            ).format(size=size_text(size), limit=size_text(limit))
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
                    settings=self.settings,
                    date=date,
                ),
            )
        except reply.ReplyError as e:
            return await self._not_sent(request, session, raw, envelope, form, str(e), 400)
        messages = reply_messages(
            mail,
            settings=self.settings,
            master=self.store.master,
            reader=envelope.recipient,
            about=session.message_id,
            date=date,
            message_id=reply_id,
        )
        if not await commit_once(self.store, messages, now, reply_id, "written"):
            return self._to_sent_page(request)  # the other click won
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
        _ = self._t(request)
        back = f'<p><a class="button secondary" href="/read">{_("Back to the message")}</a></p>'
        if not sent:
            return self._page(
                request,
                _("Nothing sent"),
                f'<div class="card"><p>{_("Nothing has been sent from this message yet.")}</p>'
                f"{back}</div>",
            )
        return self._page(
            request,
            _("Sent"),
            f'<div class="card" role="status"><p>{escape(sent[-1])}</p>{back}</div>',
        )

    def _reply_forms(
        self,
        _: Translate,
        csrf: str,
        choices: tuple[bool, bool],
        mode: str = "",
        text: str = "",
        to: str = "",
    ) -> str:
        """The reading page's Reply (and Reply all) form and its Forward form.

        C{choices}: whether the reader can reply, and reply all (L{reply.reply_choices})."""
        can_reply, can_reply_all = choices
        limit = size_text(self.settings.portal.max_upload_size)
        # One id for both forms: the page offers one reply, whichever button sends it.
        hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">{form_id_field()}'
        forms = []
        up_to = _("Up to {limit} in all.").format(limit=limit)
        if can_reply:
            buttons = f'<button type="submit" name="mode" value="reply">{_("Reply")}</button>'
            who = _("Your reply goes by e-mail to the sender, quoting the message.")
            if can_reply_all:
                buttons += (
                    ' <button type="submit" name="mode" value="reply-all" class="secondary">'
                    f"{_('Reply all')}</button>"
                )
                who += " " + _(
                    "Reply all also sends it to the others the message was sent to; anyone "
                    "outside the organisation gets it as a secure message, like this one."
                )
            kept = text if mode in ("reply", "reply-all") else ""
            forms.append(
                '<form method="post" action="/read/reply" enctype="multipart/form-data" '
                'class="card reply" aria-labelledby="reply-heading">'
                f'<h2 id="reply-heading">{_("Reply")}</h2>{hidden}'
                f'<label for="reply-text">{_("Your reply")}</label>'
                f'<textarea id="reply-text" name="text" rows="6">{escape(kept)}</textarea>'
                f'<label for="reply-files">{_("Attach files")}</label>'
                '<input type="file" id="reply-files" name="files" multiple>'
                f'<p class="note">{up_to} {who}</p>'
                f'<div class="actions">{buttons}</div></form>'
            )
        else:
            forms.append(
                '<div class="card"><p class="note">'
                + _(
                    "The sender of this message is outside the organisation, so you cannot "
                    "reply from here. Please reply from your own e-mail program."
                )
                + "</p></div>"
            )
        opened = " open" if mode == "forward" else ""
        kept = text if mode == "forward" else ""
        only = _("Addresses in the organisation only ({domains}), separated by commas.")
        forms.append(
            f'<details class="card"{opened}><summary>{_("Forward")}</summary>'
            '<form method="post" action="/read/reply" enctype="multipart/form-data" '
            f'class="reply">{hidden}<input type="hidden" name="mode" value="forward">'
            f'<label for="forward-to">{_("Forward to")}</label>'
            f'<input type="text" id="forward-to" name="to" class="address" value="{escape(to)}" '
            'autocomplete="off" required aria-describedby="forward-note">'
            '<p class="note" id="forward-note">'
            f"{only.format(domains=escape(reply.organisation(self.settings)))}</p>"
            f'<label for="forward-text">{_("Your note (optional)")}</label>'
            f'<textarea id="forward-text" name="text" rows="4">{escape(kept)}</textarea>'
            f'<label for="forward-files">{_("Attach files")}</label>'
            '<input type="file" id="forward-files" name="files" multiple>'
            f'<p class="note">{up_to} {_("The message is attached as it came.")}</p>'
            f'<div class="actions"><button type="submit">{_("Forward")}</button></div>'
            "</form></details>"
        )
        return "".join(forms)

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
        choices = await self._render(
            session, reply.reply_choices, raw, envelope.recipient, self.settings
        )
        request.setResponseCode(status)
        _ = self._t(request)
        mode = form.text("mode")
        again = ""
        if form.uploads("files"):
            again = f"<p>{_('Files you attached have to be chosen again.')}</p>"
        body = (
            f'<div class="card"><p class="error" role="alert">{escape(problem)}</p>{again}'
            f'<p><a href="/read">{_("Back to the message")}</a></p></div>'
            + self._reply_forms(
                _, session.csrf, choices, mode, form.text("text"), form.text("to", 2000)
            )
        )
        return self._page(request, _("Not sent"), body)
