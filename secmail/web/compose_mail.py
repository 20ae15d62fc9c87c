# -*- test-case-name: tests.test_compose -*-
"""
Pure: what D-Compose (L{secmail.web.compose}) sends and counts. The form's files made fit for a
mail, the message to the internal mail server, the code mail and the lock notice, and
whom a code order is counted against.
"""

from __future__ import annotations

import email.policy
import ipaddress
import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from secmail.address import DestinationError, portal_destination
from secmail.config import GatewayIdentity, PortalSettings
from secmail.notify import Notification, code_mail, sender_notice
from secmail.store.compose import LOCK_AFTER, LOCK_TIME, CodeLimits
from secmail.web.forms import FormError, SubmittedForm, Upload, read_form
from secmail.web.safe_text import safe_filename

MAX_ADDRESS_CHARS = 254
MAX_FILENAME_CHARS = 150
#: Types an attachment keeps as the browser named them; anything else is octet-stream.
_CONTENT_TYPE = re.compile(
    r"(application|audio|font|image|model|text|video)/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
)
_BINARY = "application/octet-stream"


# --- the form, parsed off the reactor -----------------------------------------------------


def parse_form(content_type: str, body: bytes) -> SubmittedForm:
    """
    Read a C{multipart/form-data} or URL-encoded body with the portal's parser (which
    keeps each file's name and type); the files of the fields named C{attachment} get
    names and types fit for the mail (L{upload_name}, L{upload_type}).
    """
    try:
        form = read_form(content_type.encode("latin-1", "replace"), body)
    except FormError:
        return SubmittedForm()
    form.files = [
        (name, Upload(upload_name(u.filename), upload_type(u.content_type), u.data))
        for name, u in form.files
        if name == "attachment" and (u.filename or u.data)
    ]
    return form


def upload_name(filename: str) -> str:
    """A file name fit for a header: no path, no control or format characters, not too long."""
    return safe_filename(filename, MAX_FILENAME_CHARS, mail_only=True) or "attachment"


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
    identity: GatewayIdentity,
    recipient: str,
    to: str,
    code: str,
    minutes: int,
    date: datetime,
) -> Notification:
    """The code that proves to the portal that C{recipient} is the outsider's address."""
    return code_mail(
        identity=identity,
        recipient=recipient,
        code=code,
        minutes=minutes,
        message_id_domain=identity.hostname,
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


def code_limits(portal: PortalSettings) -> CodeLimits:
    return CodeLimits(
        per_mailbox=portal.compose_codes_per_mailbox,
        per_client=portal.compose_codes_per_client,
        per_hour=portal.compose_codes_per_hour,
        per_day=portal.compose_codes_per_day,
    )


def build_lock_notice(*, identity: GatewayIdentity, recipient: str, date: datetime) -> Notification:
    """The mail telling the owner of C{recipient} that codes for it stopped, and why."""
    return sender_notice(
        identity=identity,
        sender=recipient,
        subject="Codes for writing secure messages stopped for your address",
        paragraphs=[
            f"On the secure message page of {identity.hostname}, a wrong code "
            f"was typed {LOCK_AFTER} times to confirm the address {recipient}. To keep "
            "anyone from guessing a code and writing in your name, no codes are sent to "
            f"this address for the next {LOCK_TIME // 86400} days.",
            "If it was you, please write to the organisation in another way, or try "
            "again later. If not, someone else may have tried to use your address; no "
            "message was sent in your name.",
        ],
        message_id_domain=identity.hostname,
        date=date,
    )
