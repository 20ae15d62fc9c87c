# -*- test-case-name: tests.test_settings_live -*-
"""
The SMS backends and the outbox that uses them, built again when the C{[sms]} settings
change on a running gateway (a cluster setting, see L{secmail.settings}): the old backends'
services (a modem's serial link) stop first, then the new ones start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from secmail.config import Settings, SmsSettings
from secmail.sms.dispatch import SmsBackend
from secmail.sms.outbox import SmsOutbox

log = Logger()

#: C{build_backends} with its reactor and mail sender bound: the settings and the From.
BuildBackends = Callable[[SmsSettings, str], tuple[list[SmsBackend], Sequence[IService]]]


class LiveSms(MultiService):
    """
    Holds the backends' services and the outbox. Without backends no outbox runs: rows
    another node wrote wait for a node with backends.
    """

    def __init__(
        self, build: BuildBackends, make_outbox: Callable[[list[SmsBackend]], SmsOutbox]
    ) -> None:
        super().__init__()
        self.setName("sms")
        self.build = build
        self.make_outbox = make_outbox
        self.outbox: SmsOutbox | None = None
        self._built_for: tuple[SmsSettings, str] | None = None

    def wake(self) -> None:
        if self.outbox is not None:
            self.outbox.wake()

    def apply(self, settings: Settings) -> None:
        """Build the backends for C{settings} unless they are those already built."""
        wanted = (settings.sms, settings.identity.notification_from)
        if wanted == self._built_for:
            return
        self._built_for = wanted
        stopping = [d for d in map(self.removeService, list(self)) if isinstance(d, Deferred)]
        self.outbox = None
        if stopping:
            DeferredList(stopping).addCallback(lambda _: self._start(*wanted))
        else:
            self._start(*wanted)

    def _start(self, sms: SmsSettings, from_address: str) -> None:
        if (sms, from_address) != self._built_for:
            return  # a newer change came while the old backends stopped
        backends, services = self.build(sms, from_address)
        for service in services:
            self.addService(service)
        if backends:
            self.outbox = self.make_outbox(backends)
            self.addService(self.outbox)
        if self.running:
            log.info("SMS backends now: {order}", order=", ".join(sms.order) or "none")
