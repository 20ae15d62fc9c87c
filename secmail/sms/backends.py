"""
The SMS backends named in C{sms.order}, built from the settings in that order.

The modem link is a service (opened at start, closed at stop); the HTTP gateway uses
a verifying HTTPS client; the e-mail gateway hands its mail to the outbound queue
through C{send_mail}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from secmail.config import RouteSettings, SmsSettings
from secmail.crypto import MasterKey
from secmail.letters import routed_mail
from secmail.services import StartStopService
from secmail.sms.at import ModemProtocol
from secmail.sms.dispatch import EmailSmsBackend, SmsBackend
from secmail.sms.http import HttpSmsGateway
from secmail.sms.modem import ModemLink, serial_opener
from secmail.store.messages import NewMessage

SendMail = Callable[[str, bytes], Awaitable[None]]

#: The audit trail that records the deliveries of SMS sent as e-mail.
SMS_MAIL_TRAIL = "sms-by-mail"


def sms_mail(
    routes: RouteSettings, bounce_address: str, master: MasterKey, to: str, content: bytes
) -> NewMessage:
    """
    An SMS as e-mail, ready to commit: queued on the route for the gateway's address, from
    the gateway's C{bounce_address}.
    """
    return routed_mail(
        routes,
        master,
        kind="sms",
        sender=bounce_address,
        to=to,
        content=content,
        about=SMS_MAIL_TRAIL,
    )


def build_backends(
    sms: SmsSettings, from_address: str, reactor: Any, send_mail: SendMail
) -> tuple[list[SmsBackend], list[StartStopService]]:
    """
    The backends in C{sms.order}, and the services that must run for them. SMS sent as
    e-mail come from C{from_address} (C{gateway.notification_from}).
    """
    backends: list[SmsBackend] = []
    services: list[StartStopService] = []
    for name in sms.order:
        if name == "modem":
            assert sms.modem is not None  # the configuration checks it
            modem = sms.modem
            link = ModemLink(
                reactor,
                serial_opener(reactor, modem.device, modem.baudrate),
                partial(ModemProtocol, reactor, modem.sim_pin or None),
            )
            backends.append(link)
            services.append(StartStopService("sms-modem", link.start, link.stop))
        elif name == "http":
            assert sms.http is not None
            backends.append(HttpSmsGateway(sms.http, https_client(reactor), reactor))
        elif name == "smtp":
            assert sms.smtp_address is not None
            backends.append(
                EmailSmsBackend(
                    sms.smtp_address,
                    send_mail,
                    from_address=from_address,
                )
            )
    return backends, services


def https_client(reactor: Any) -> Any:
    """
    treq's client on an Agent that verifies certificates against the system's CAs. A new
    connection per SMS: a kept-alive one the gateway closed meanwhile would fail a POST.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    return HTTPClient(Agent(reactor))
