"""
C{twistd secmail}: options and the one place where the gateway is put together.

Everything else receives its collaborators (reactor, store, resolver, sender)
as arguments; only this module builds them and wires the services. Services
start in the order they are added and stop in reverse: the database first up
and last down, the listeners last up and first down.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from secmail import __version__, config
from secmail.admin.accounts import AdminAccounts
from secmail.config.cluster import LiveSettings
from secmail.crypto import (
    DerivedKeys,
    MasterKeyError,
    derive_key,
    generate_key_file,
    load_key_file,
)
from secmail.logs import use_json_logs
from secmail.monitoring.agent import ReportAgent, ReportBuilder, https_post
from secmail.monitoring.counting import FLUSH_INTERVAL, DailyFlush
from secmail.monitoring.gauges import QueueGauges
from secmail.monitoring.health import Readiness
from secmail.monitoring.http import monitoring_site
from secmail.monitoring.statsmail import StatisticsMail
from secmail.queue import OutboundQueue, RetentionJob
from secmail.resend import LetterResend
from secmail.rotation import ROTATION_INTERVAL, KeyRotation
from secmail.services import OrderedServices, StartStopService
from secmail.settings import POLL_SECONDS, ClusterSettings, SettingsPoller, checked, decode
from secmail.sms import pin_text
from secmail.sms.backends import build_backends, sms_mail
from secmail.sms.dispatch import SmsDispatcher
from secmail.sms.live import LiveSms
from secmail.sms.outbox import SmsOutbox
from secmail.smtp.delivery import GatewayDelivery, Intake
from secmail.smtp.routing import SmtpSender
from secmail.smtp.server import GatewayESMTPFactory
from secmail.store.admins import AdminStore
from secmail.store.audit import AuditTrail
from secmail.store.compose import ComposeStore
from secmail.store.database import Database, StoreUnavailable
from secmail.store.engines import engine_for
from secmail.store.keys import KeyStore, live_nodes_blocking, sealing_key
from secmail.store.messages import MessageStore
from secmail.store.nodes import write_probe
from secmail.store.portal import PortalStore
from secmail.store.settings import stored_blocking
from secmail.store.sms import SmsStore
from secmail.store.spool import clean_spool
from secmail.store.stats import DailyStats
from secmail.store.trace import MessageTrace
from secmail.tls import CertificateError, ensure_self_signed, server_options

log = Logger()

#: Seconds a thread may hold the GIL while another waits (see makeService).
GIL_SWITCH_INTERVAL = 0.0005
#: Threads that parse and render stored mail for the portal. Few: the work is CPU-bound,
#: and the reactor's own pool stays free for name lookups and file reads.
RENDER_THREADS = 2


class Options(usage.Options):
    synopsis = "[--config FILE] [--json-logs]"
    longdesc = (
        "Runs the secmail gateway: the ESMTP server, the outbound queue and the HTTPS portal. "
        f"Without --config it reads {config.DEFAULT_FILE} when that exists, else it runs on "
        "its embedded defaults (see etc/secmail.toml)."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"The configuration file (TOML). Default: {config.DEFAULT_FILE} when it exists, "
            "else the embedded defaults.",
        ],
    ]
    optFlags = [
        [
            "json-logs",
            None,
            "Log one JSON object per line (time, level, namespace, text and the event's fields, "
            "such as message_id) instead of text lines; to the same place as the text log.",
        ],
    ]

    def postOptions(self) -> None:
        if self["json-logs"]:
            parent = getattr(self, "parent", None)
            if parent is None:
                _stop("--json-logs works only under twistd (twistd secmail --json-logs)")
            use_json_logs(parent)
        path = self["config"] or config.default_path()
        try:
            self["file"] = config.read_file(path)
            self["settings"] = config.from_mapping(self["file"])
        except config.ConfigError as e:
            _stop(str(e))


def _stop(message: str) -> NoReturn:
    """One clear line and a non-zero exit: no usage text, no traceback."""
    print("secmail: " + " ".join(message.split()), file=sys.stderr)
    raise SystemExit(1)


class Listener(StreamServerEndpointService):
    """
    A listener that cannot bind (port taken, no permission) stops start-up with one line naming
    its configuration key, instead of a gateway that runs on without it.

    twistd binds every listener in C{privilegedStartService}, before the reactor runs and before
    any other service starts, so nothing is half started when this exits.
    """

    def __init__(self, key: str, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.key = key
        self.description = description
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            _stop(f"{self.key}: cannot listen on {self.description}: {listen_problem(e)}")


def listen_problem(error: CannotListenError) -> str:
    """The socket's reason, with what to do about the two usual ones."""
    reason = error.socketError
    code = getattr(reason, "errno", None)
    text = getattr(reason, "strerror", None) or str(reason)
    if code == errno.EADDRINUSE:
        return f"{text} (another program, or another secmail, is using that port)"
    if code == errno.EACCES:
        return (
            f"{text} (ports below 1024 need root or CAP_NET_BIND_SERVICE; "
            "see the README's network section)"
        )
    if code == errno.EADDRNOTAVAIL:
        return f"{text} (the interface address is not one of this machine's)"
    return text


class SessionCleanup:
    """Removes timed-out portal, compose and console sessions and old codes (a TimerService)."""

    def __init__(
        self,
        sessions: PortalStore,
        compose: ComposeStore,
        clock: Any,
        admins: AdminStore | None = None,
    ) -> None:
        self.sessions = sessions
        self.compose = compose
        self.clock = clock
        self.admins = admins

    def run(self) -> Deferred[None]:
        async def run() -> None:
            now = int(self.clock.seconds())
            await self.sessions.delete_stale_sessions(now)
            await self.compose.delete_stale(now)
            if self.admins is not None:
                await self.admins.delete_stale(now)

        return Deferred.fromCoroutine(run()).addErrback(
            lambda f: log.failure("Session clean-up failed; will try again", f)
        )


def load_master_key(settings: config.Settings) -> Any:
    path = settings.store.master_key_file
    if settings.store.master_key_generated and not os.path.exists(path):
        log.info("Generating a new master key in {path}", path=path)
        return generate_key_file(path)
    return load_key_file(path)


def pin_text_problems(settings: config.Settings) -> list[str]:
    """
    Why a PIN text would not fit one SMS, in each portal language. The words come from the
    portal's catalogues, which web/ owns: this composition root is where secmail meets web,
    so C{secmail check-config} asks here too.
    """
    from secmail.web.i18n import translator

    return pin_text.pin_text_problems(settings.sms, settings.portal, translator)


def portal_endpoint(reactor: Any, description: str, tls: Any, factory: Any) -> Any:
    """An C{ssl:} endpoint without key files uses our certificate; others are used as they are."""
    if description.startswith("ssl:") and "privateKey=" not in description:
        endpoint = serverFromString(reactor, "tcp:" + description[len("ssl:") :])
        return endpoint, TLSMemoryBIOFactory(tls, False, factory)
    return serverFromString(reactor, description), factory


def makeService(options: Options) -> IService:
    from twisted.internet import reactor
    from twisted.names import client as dns_client

    from secmail.web.admin.console import Console
    from secmail.web.admin.overview import Operations
    from secmail.web.compose import Compose
    from secmail.web.portal import Portal
    from secmail.web.site import make_site

    settings: config.Settings = options["settings"]
    if settings.sms.order:
        for problem in pin_text_problems(settings):
            _stop(problem)
    # The reactor and the database thread share the GIL. Each SQL statement releases it, and
    # getting it back waits for the reactor's time slice (5 ms by default): the commit, and so
    # every 250 after DATA, waits on that. Measured with bench/load.py (2 KB, 10 connections):
    # 0.5 ms slices accept 11-16 % more mail.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # Everything the gateway writes (database, WAL, spool, keys, certificate) is its own:
    # twistd sets this umask only when it daemonises, not with -n.
    os.umask(0o077)
    os.makedirs(settings.gateway.data_dir, mode=0o700, exist_ok=True)
    if not settings.smtp.accepted_networks:
        log.warn("smtp.accepted_networks is empty: no client may hand mail to this gateway")

    try:
        master = load_master_key(settings)
    except (MasterKeyError, OSError) as e:
        _stop(f"store.master_key_file: {e}")

    if settings.tls_generated and ensure_self_signed(
        settings.tls_certificate, settings.tls_key, settings.gateway.hostname
    ):
        log.info("Made a self-signed certificate in {path}", path=settings.tls_certificate)
    try:
        tls = server_options(settings.tls_certificate, settings.tls_key)
    except CertificateError as e:
        _stop(f"smtp.tls_certificate: {e}")

    top = OrderedServices()
    engine = engine_for(settings.store.database)
    db = Database(engine, reactor)
    try:
        db.prepare_blocking()
    except StoreUnavailable as e:
        _stop(f"store.database: {e}")
    except Exception as e:
        _stop(f"store.database: cannot open {engine.describe()}: {e}")
    node_id = settings.gateway.hostname + "/" + socket.gethostname()
    try:
        # Before the first mail: seal with a key every other running node holds.
        nodes = live_nodes_blocking(engine, int(reactor.seconds()))
    except Exception as e:
        _stop(f"store.database: cannot open {engine.describe()}: {e}")
    master.seal_with(sealing_key(master.key_ids, [n for n in nodes if n.node != node_id]))
    removed = clean_spool(os.path.join(settings.gateway.data_dir, "spool"))
    if removed:
        log.info("Removed {n} unfinished message(s) left in the spool", n=removed)

    # The cluster settings stored in the database, under this node's file (secmail/settings.py).
    file_raw = options.get("file", {})
    extra_check = pin_text_problems_of_sms
    try:
        version, stored = stored_blocking(engine)
    except Exception as e:
        _stop(f"store.database: cannot open {engine.describe()}: {e}")
    try:
        settings = checked(file_raw, decode(stored), extra_check)
    except config.ConfigError as e:
        # Not on the file alone: without the cluster's settings (secure.mode, the subject
        # keyword, accepted networks, routes) a node could relay in the clear what the others
        # would keep secure. One line naming the key; `secmail settings unset KEY` mends it.
        _stop(
            f"the cluster settings in the database cannot be used with this node's file: {e} "
            "(secmail settings show|unset KEY)"
        )
    live = LiveSettings(settings)
    poller = SettingsPoller(db, file_raw, live, version, extra_check)

    store = MessageStore(db, master)
    resolver = dns_client.createResolver()
    # Each component gets its own section, or a small value made of bits of several.
    identity = settings.identity
    sender = SmtpSender(identity.hostname, settings.routes, settings.queue, reactor, resolver)
    queue = OutboundQueue(
        settings.queue, identity.hostname, settings.routes, store, sender, reactor, node_id
    )
    intake = Intake(
        store,
        master,
        reactor,
        deferToThread,
        on_commit=queue.wake,
        texts=settings.notification_texts,
        routes=settings.routes,
        secure=settings.secure,
        data_dir=settings.gateway.data_dir,
        max_message_size=settings.smtp.max_message_size,
    )

    StartStopService("database", db.start, db.stop).setServiceParent(top)
    # The day's counts: written every FLUSH_INTERVAL, and last of all before the database closes.
    daily = DailyFlush(DailyStats(db))
    StartStopService("statistics", lambda: None, daily.run).setServiceParent(top)
    TimerService(FLUSH_INTERVAL, daily.run).setServiceParent(top)
    TimerService(POLL_SECONDS, poller.run).setServiceParent(top)
    StartStopService("queue", queue.start_after_restart, queue.stop_scanning).setServiceParent(top)

    # Texts and code HMACs use keys derived from the sealing master key and are checked with
    # every key of the ring, so they outlive a rotation (see secmail/rotation.py).
    sms_store = SmsStore(db, DerivedKeys(master, "sms-outbox"))

    async def send_mail(to: str, content: bytes) -> None:
        """An SMS by e-mail: queued like any mail the gateway writes."""
        now = live.current
        mail = sms_mail(now.routes, now.identity.bounce_address, master, to, content)
        await store.commit([mail], int(reactor.seconds()))
        queue.wake()

    async def record(about: str, kind: str, detail: str) -> None:
        await store.add_event(about, None, kind, detail, int(reactor.seconds()))

    # Built again when the [sms] settings change (secmail/sms/live.py).
    sms = LiveSms(
        lambda sms, sender: build_backends(sms, sender, reactor, send_mail),
        lambda backends: SmsOutbox(sms_store, SmsDispatcher(backends, record), reactor, node_id),
    )
    sms.apply(settings)
    sms.setServiceParent(top)
    retention = RetentionJob(settings.retention, store, reactor)
    TimerService(3600, retention.run).setServiceParent(top)

    rotation = KeyRotation(master, KeyStore(db), reactor, node_id)
    TimerService(ROTATION_INTERVAL, rotation.run).setServiceParent(top)

    portal_store = PortalStore(db, DerivedKeys(master, "portal-codes"))
    compose_store = ComposeStore(db, DerivedKeys(master, "compose-codes"))
    admin_store = AdminStore(db)
    cleanup = SessionCleanup(portal_store, compose_store, reactor, admin_store)
    TimerService(600, cleanup.run).setServiceParent(top)
    # Reading a letter (MIME parse, charset decoding, HTML sanitising) is CPU work a
    # message's author controls: never on the reactor thread.
    render_pool = ThreadPool(minthreads=0, maxthreads=RENDER_THREADS, name="secmail-render")
    threads_reactor: Any = reactor
    StartStopService("render-pool", render_pool.start, render_pool.stop).setServiceParent(top)
    compose = Compose(
        live,
        store,
        compose_store,
        reactor,
        csrf_key=derive_key(master, "compose-csrf"),
        on_commit=queue.wake,
    )
    portal = Portal(
        live,
        store,
        portal_store,
        reactor,
        csrf_key=derive_key(master, "portal-csrf"),
        on_commit=queue.wake,
        compose=compose.app.resource(),
        run_in_thread=partial(deferToThreadPool, threads_reactor, render_pool),
        sms=sms_store,
        on_sms=sms.wake,
    )
    site = make_site(portal)
    for description in settings.portal.listen:
        endpoint, factory = portal_endpoint(reactor, description, tls, site)
        Listener("portal.listen", description, endpoint, factory).setServiceParent(top)

    # The admin console and its API: an app and a site of their own, on their own listeners.
    accounts = AdminAccounts(
        admin_store,
        DerivedKeys(master, "admin-totp"),
        reactor,
        run_in_thread=deferToThread,
        issuer=f"secmail {identity.hostname}",
    )
    # Message trace, revoke and resend in the console (secmail/web/admin/trace.py).
    trace = MessageTrace(
        db,
        extension=settings.secure.extension,
        default_country_code=settings.secure.default_country_code,
    )
    resender = LetterResend(
        store, master, trace, lambda: live.current, reactor, on_commit=queue.wake
    )
    # The settings page and API change the cluster settings with this node's file and checks.
    origin = options.get("config") or config.default_path() or "the embedded defaults"
    console = Console(
        settings,
        accounts,
        AuditTrail(db),
        reactor,
        form_key=derive_key(master, "admin-csrf"),
        trace=trace,
        resender=resender,
        ops=Operations(queue=store, sms=sms_store, stats=DailyStats(db).days, live=live),
        cluster=ClusterSettings(db, file_raw, origin, extra_check),
    )
    admin_site = make_site(console)
    for description in settings.admin.listen:
        endpoint, factory = portal_endpoint(reactor, description, tls, admin_site)
        Listener("admin.listen", description, endpoint, factory).setServiceParent(top)

    smtp_factory = GatewayESMTPFactory(
        settings.smtp,
        settings.gateway.hostname,
        lambda: GatewayDelivery(intake),
        reactor,
        tls if settings.smtp.starttls else None,
    )
    for description in settings.smtp.listen:
        Listener(
            "smtp.listen", description, serverFromString(reactor, description), smtp_factory
        ).setServiceParent(top)

    def follow(new: config.Settings) -> None:
        """A cluster setting changed: what each component reads from now on."""
        intake.texts = new.notification_texts
        intake.identity = new.identity
        intake.routes = new.routes
        intake.secure = new.secure
        intake.max_message_size = new.smtp.max_message_size
        queue.queue = new.queue
        queue.hostname = new.gateway.hostname
        queue.routes = new.routes
        retention.retention = new.retention
        trace.extension = new.secure.extension
        trace.default_country_code = new.secure.default_country_code
        # The steps that build something may fail; each on its own, so one does not keep
        # the others on the old settings.
        steps: list[tuple[str, Callable[[], object]]] = [
            (
                "new SMTP sessions",
                lambda: smtp_factory.use(
                    new.smtp, new.gateway.hostname, tls if new.smtp.starttls else None
                ),
            ),
            ("outgoing SMTP", lambda: sender.use(new.gateway.hostname, new.routes, new.queue)),
            ("the SMS backends", lambda: sms.apply(new)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.failure("Applying changed settings to {what} failed", what=what)

    live.subscribe(follow)
    monitoring(top, reactor, settings, db, store, queue, master, node_id)
    return top


def monitoring(
    top: MultiService,
    reactor: Any,
    settings: config.Settings,
    db: Database,
    store: MessageStore,
    queue: OutboundQueue,
    master: Any,
    node_id: str,
) -> None:
    """The queue's gauges, and the [metrics] listener with /metrics, /livez and /readyz."""
    gauges = QueueGauges(store.queue_figures, reactor)
    TimerService(max(settings.queue.poll_interval, 1.0), gauges.run).setServiceParent(top)
    readiness = Readiness(
        reactor,
        db_probe=lambda: write_probe(db, node_id, __version__, int(reactor.seconds())),
        data_dir=settings.gateway.data_dir,
        min_free_bytes=1.5 * settings.smtp.max_message_size,
        read_key=lambda: deferToThread(load_key_file, master.path),
        queue=queue,
    )
    started = reactor.seconds()
    site = monitoring_site(reactor, started, readiness)
    for description in settings.metrics.listen:
        Listener(
            "metrics.listen", description, serverFromString(reactor, description), site
        ).setServiceParent(top)
    if settings.monitoring.report_url:
        try:
            post = https_post(settings.monitoring, reactor)
        except CertificateError as e:
            _stop(f"monitoring.report_ca_file: {e}")
        report = ReportBuilder(
            reactor, node_id, started, readiness, store.queue_figures, DailyStats(db).days_of
        )
        ReportAgent(settings.monitoring, reactor, report.build, post).setServiceParent(top)
    if settings.monitoring.statistics_to:
        mail = StatisticsMail(
            settings.monitoring, settings.identity, settings.routes, master, db, reactor, queue.wake
        )
        TimerService(3600, mail.run).setServiceParent(top)


def pin_text_problems_of_sms(settings: config.Settings) -> list[str]:
    """L{pin_text_problems} when SMS are sent, for settings changed while the gateway runs."""
    return pin_text_problems(settings) if settings.sms.order else []
