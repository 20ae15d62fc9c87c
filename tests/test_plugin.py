"""The twistd plugin and the composition root: options, configuration errors, the service tree."""

from __future__ import annotations

import base64
import contextlib
import copy
import errno
import io
import os
import stat
import tempfile

from twisted.application.internet import TimerService
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.plugin import getPlugins
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from secmail import config, tap
from secmail.queue import OutboundQueue
from secmail.rotation import ROTATION_INTERVAL, KeyRotation
from secmail.services import StartStopService
from secmail.settings import POLL_SECONDS, SettingsPoller
from secmail.sms.live import LiveSms
from secmail.sms.modem import ModemLink
from secmail.sms.outbox import SmsOutbox
from secmail.smtp.server import GatewayESMTPFactory
from secmail.store.database import Database

EXAMPLE_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "secmail.toml")


def config_for(data_dir: str, extra: str = "") -> str:
    """
    The example configuration with its data directory (and database) under C{data_dir},
    and C{extra} lines put in place of its C{[sms]} section's C{order}.
    """
    with open(EXAMPLE_CONFIG, encoding="utf-8") as f:
        text = f.read()
    if extra:
        text = text.replace("\norder = []\n", "\n" + extra + "\n", 1)
    text = text.replace('data_dir = "secmail-data"', f'data_dir = "{data_dir}"')
    # Ports nobody else uses; nothing listens anyway, as the service is never started.
    text = text.replace('listen = ["tcp:2525:interface=127.0.0.1"]', 'listen = ["tcp:12525"]')
    text = text.replace(
        'listen = ["ssl:8443:interface=127.0.0.1"]', 'listen = ["ssl:18443:interface=127.0.0.1"]'
    )
    assert data_dir in text and "12525" in text and "18443" in text
    path = os.path.join(data_dir, "secmail.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """twistd finds a "secmail" plugin that builds the service from secmail.tap."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "secmail"]
        self.assertTrue(makers)
        for maker in makers:
            self.assertIs(maker.options, tap.Options)
            self.assertIs(maker.makeService, tap.makeService)

    def test_plugin_module_is_light(self) -> None:
        """The plugin file imports nothing of secmail (twistd imports every plugin file)."""
        path = os.path.join(os.path.dirname(__file__), os.pardir, "twisted", "plugins")
        with open(os.path.join(path, "secmail_plugin.py"), encoding="utf-8") as f:
            source = f.read()
        self.assertNotIn("import secmail", source)
        self.assertNotIn("from secmail", source)


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-tap-")

    def test_example_config(self) -> None:
        """--config with the example configuration gives its settings."""
        options = tap.Options()
        options.parseOptions(["--config", config_for(self.dir)])
        settings = options["settings"]
        self.assertEqual(settings.gateway.data_dir, self.dir)
        self.assertEqual(settings.gateway.hostname, "localhost")
        self.assertEqual(settings.smtp.listen, ("tcp:12525",))

    def test_default_file(self) -> None:
        """Without --config the gateway reads the default file, as the secmail command does."""
        self.patch(config, "DEFAULT_FILE", config_for(self.dir))
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].gateway.data_dir, self.dir)
        self.patch(config, "DEFAULT_FILE", os.path.join(self.dir, "absent.toml"))
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].smtp.listen, ("tcp:2525:interface=127.0.0.1",))

    def test_bad_config(self) -> None:
        """A bad configuration stops twistd with one line on stderr and exit status 1."""
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write('[secure]\nmode = "sometimes"\n')
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as e:
            tap.Options().parseOptions(["--config", path])
        self.assertEqual(e.exception.code, 1)
        [line] = err.getvalue().splitlines()
        self.assertTrue(line.startswith("secmail: secure.mode: "), line)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-tap-")
        umask = os.umask(0o022)  # makeService sets the process's umask: put it back after
        os.umask(umask)
        self.addCleanup(os.umask, umask)
        # makeService makes a DNS resolver, which re-reads resolv.conf on a global-reactor timer.
        before = set(reactor.getDelayedCalls())

        def cancel_new_timers() -> None:
            for call in reactor.getDelayedCalls():
                if call not in before and call.active():
                    call.cancel()

        self.addCleanup(cancel_new_timers)

    def make(self, extra: str = "") -> MultiService:
        options = tap.Options()
        options.parseOptions(["--config", config_for(self.dir, extra)])
        service = tap.makeService(options)
        self.assertTrue(IService.providedBy(service))
        assert isinstance(service, MultiService)
        return service

    def test_service_tree(self) -> None:
        """Database first, the day's statistics, the cluster settings' poll, the queue, the SMS
        holder (empty without SMS), periodic jobs, the rendering threads, portal and the SMTP
        listener, then the queue's gauges and the monitoring listener."""
        top = self.make()
        self.assertFalse(top.running)
        children = list(top)
        self.assertEqual(
            [type(c) for c in children],
            [
                StartStopService,  # the database
                StartStopService,  # the day's statistics: last written before the database closes
                TimerService,  # the day's statistics, written every few seconds
                TimerService,  # the cluster settings' poll
                StartStopService,  # the queue
                LiveSms,  # the SMS backends and outbox, none here
                TimerService,  # retention
                TimerService,  # master key rotation
                TimerService,  # portal session clean-up
                StartStopService,  # the portal's rendering, started before the portal
                tap.Listener,  # the portal
                tap.Listener,  # the admin console
                tap.Listener,  # SMTP
                TimerService,  # the queue's gauges (metrics)
                tap.Listener,  # [metrics] listen
            ],
        )
        self.assertEqual(
            [c.key for c in children if isinstance(c, tap.Listener)],
            ["portal.listen", "admin.listen", "smtp.listen", "metrics.listen"],
        )
        self.assertIs(top.getServiceNamed("database"), children[0])
        self.assertFalse(any(c.running for c in children))
        database = children[0]
        assert isinstance(database, StartStopService)
        self.assertIsInstance(database.start.__self__, Database)  # type: ignore[attr-defined]
        self.assertEqual(database.stop, database.start.__self__.stop)  # type: ignore[attr-defined]

        poll = children[3]
        assert isinstance(poll, TimerService)
        self.assertIsInstance(poll.call[0].__self__, SettingsPoller)  # type: ignore[attr-defined]
        self.assertEqual(poll.step, POLL_SECONDS)
        self.assertEqual(list(children[5]), [])

        queue_starter = children[4]
        assert isinstance(queue_starter, StartStopService)
        self.assertIs(top.getServiceNamed("queue"), queue_starter)
        queue = queue_starter.start.__self__  # type: ignore[attr-defined]
        self.assertIsInstance(queue, OutboundQueue)
        self.assertEqual(queue_starter.start, queue.start_after_restart)
        self.assertEqual(queue_starter.stop, queue.stop_scanning)

        rotation = children[7]
        assert isinstance(rotation, TimerService)
        self.assertIsInstance(rotation.call[0].__self__, KeyRotation)  # type: ignore[attr-defined]
        self.assertEqual(rotation.step, ROTATION_INTERVAL)

        render_pool = children[9]
        assert isinstance(render_pool, StartStopService)
        pool = render_pool.start.__self__  # type: ignore[attr-defined]
        self.assertIsInstance(pool, ThreadPool)
        self.assertEqual(render_pool.stop, pool.stop)
        self.assertEqual(pool.max, tap.RENDER_THREADS)
        self.assertFalse(pool.started)
        portal, admin, smtp = children[10], children[11], children[12]
        assert isinstance(portal, tap.Listener)
        assert isinstance(admin, tap.Listener)
        assert isinstance(smtp, tap.Listener)
        self.assertEqual(
            (portal.key, admin.key, smtp.key), ("portal.listen", "admin.listen", "smtp.listen")
        )
        # The console: TLS with the same certificate, around a site of its own (not the portal's).
        self.assertIsInstance(admin.factory, TLSMemoryBIOFactory)
        self.assertEqual(admin.endpoint._port, 9443)  # type: ignore[attr-defined]
        self.assertIsNot(admin.factory.wrappedFactory, portal.factory.wrappedFactory)  # type: ignore[attr-defined]
        # "ssl:" without key files: TLS with our own certificate around the portal's site.
        self.assertIsInstance(portal.factory, TLSMemoryBIOFactory)
        self.assertEqual(portal.endpoint._port, 18443)  # type: ignore[attr-defined]
        self.assertIsInstance(smtp.factory, GatewayESMTPFactory)
        self.assertEqual(smtp.endpoint._port, 12525)  # type: ignore[attr-defined]
        # A committed message wakes the queue at once.
        delivery = smtp.factory._delivery_factory()
        self.assertEqual(delivery.intake.on_commit, queue.wake)

    def test_changed_settings_reach_the_components(self) -> None:
        """What the poll hands over reaches new SMTP sessions, the intake, queue and SMS."""
        top = self.make()
        poller = list(top)[3].call[0].__self__  # type: ignore[attr-defined]
        assert isinstance(poller, SettingsPoller)
        smtp = list(top)[12]
        assert isinstance(smtp, tap.Listener)
        intake = smtp.factory._delivery_factory().intake
        # The example file sets every key; here the file's values are changed instead.
        raw = copy.deepcopy(poller.file_raw)
        raw["smtp"]["max_recipients"] = 7
        raw["portal"]["verification_phrase"] = "Blue heron"
        raw["queue"]["concurrency"] = 3
        raw["sms"] = {"order": ["smtp"], "smtp": {"address": "{to}@sms.example"}}
        self.assertTrue(poller.live.update(config.from_mapping(raw)))
        self.assertEqual(smtp.factory.buildProtocol(None)._settings.max_recipients, 7)
        self.assertEqual(intake.texts.branding.verification_phrase, "Blue heron")
        queue = top.getServiceNamed("queue").start.__self__  # type: ignore[attr-defined]
        self.assertEqual(queue.queue.concurrency, 3)
        sms = top.getServiceNamed("sms")
        self.assertEqual([c.name for c in sms], ["sms-outbox"])

    def test_a_failing_step_does_not_keep_the_others_on_old_settings(self) -> None:
        """When the SMS backends cannot be built anew, the rest follows the change all the same."""
        top = self.make()
        poller = list(top)[3].call[0].__self__  # type: ignore[attr-defined]
        sms = top.getServiceNamed("sms")

        def broken(new: object) -> None:
            raise RuntimeError("no such serial port")

        sms.apply = broken  # type: ignore[attr-defined]
        raw = copy.deepcopy(poller.file_raw)
        raw["smtp"]["max_recipients"] = 9
        raw["queue"]["concurrency"] = 4
        self.assertTrue(poller.live.update(config.from_mapping(raw)))
        queue = top.getServiceNamed("queue").start.__self__  # type: ignore[attr-defined]
        self.assertEqual(queue.queue.concurrency, 4)
        smtp = list(top)[12]
        self.assertEqual(smtp.factory.buildProtocol(None)._settings.max_recipients, 9)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_sms_backends_wired(self) -> None:
        """With a modem in sms.order its link runs as a service before the outbox sends."""
        top = self.make(
            'order = ["modem", "smtp"]\n[sms.modem]\ndevice = "/dev/null-modem"\n'
            '[sms.smtp]\naddress = "{to}@sms.example"\n[sms.pin_text]\nen = "PIN {pin}"'
        )
        children = list(top.getServiceNamed("sms"))
        self.assertEqual([type(c) for c in children], [StartStopService, SmsOutbox])
        self.assertEqual([c.name for c in children], ["sms-modem", "sms-outbox"])
        modem = children[0]
        assert isinstance(modem, StartStopService)
        link = modem.start.__self__  # type: ignore[attr-defined]
        self.assertIsInstance(link, ModemLink)
        self.assertEqual(modem.stop, link.stop)
        outbox = children[1]
        assert isinstance(outbox, SmsOutbox)
        self.assertEqual([b.name for b in outbox.dispatcher._backends], ["modem", "smtp"])

    def test_pin_text_too_long_for_one_sms(self) -> None:
        """A PIN text that needs two SMS stops start-up with one line naming the key."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as e:
            self.make(
                'order = ["smtp"]\n[sms.smtp]\naddress = "{to}@sms.example"\n'
                '[sms.pin_text]\nfi = "' + "Ä {pin} " * 30 + '"'
            )
        self.assertEqual(e.exception.code, 1)
        [line] = err.getvalue().splitlines()
        self.assertEqual(
            line,
            "secmail: sms.pin_text.fi: the SMS would be 270 characters and one SMS holds "
            "160; shorten it",
        )

    def test_stored_settings_this_file_cannot_use_stop_start_up(self) -> None:
        """Not a node on its file alone (it could relay in the clear what the cluster keeps
        secure): one line naming the key, and how to mend it."""
        from secmail.store.engines import SqliteEngine

        database = os.path.join(self.dir, "secmail.sqlite")
        Database(SqliteEngine(database), None).prepare_blocking()
        conf = os.path.join(self.dir, "small.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f'[gateway]\ndata_dir = "{self.dir}"\n[metrics]\nlisten = []\n')
        import sqlite3

        with sqlite3.connect(database) as conn:
            conn.execute(
                "INSERT INTO settings (key, value, changed_at, changed_by) "
                "VALUES ('smtp.max_recipients', '\"many\"', 0, 'x')"
            )
        options = tap.Options()
        options.parseOptions(["--config", conf])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as e:
            tap.makeService(options)
        self.assertEqual(e.exception.code, 1)
        [line] = err.getvalue().splitlines()
        self.assertIn("smtp.max_recipients", line)
        self.assertIn("secmail settings show|unset KEY", line)

    def test_first_start_files(self) -> None:
        """A first start makes a 0600 database and master key, and a self-signed certificate."""
        self.make()
        database = os.path.join(self.dir, "secmail.sqlite")
        self.assertEqual(stat.S_IMODE(os.stat(database).st_mode), 0o600)
        key = os.path.join(self.dir, "master.key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "tls", "cert.pem")))
        self.assertTrue(os.path.isdir(os.path.join(self.dir, "spool")))

    def test_unreadable_master_key(self) -> None:
        """A master key file open to others stops start-up with one line naming the setting."""
        key = os.path.join(self.dir, "master.key")
        with open(key, "w", encoding="ascii") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        os.chmod(key, 0o644)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as e:
            self.make()
        self.assertEqual(e.exception.code, 1)
        [line] = err.getvalue().splitlines()
        self.assertTrue(line.startswith("secmail: store.master_key_file: "), line)
        self.assertIn("chmod 600", line)


class FailingEndpoint:
    """An endpoint whose port is taken, as the kernel would say."""

    def __init__(self, code: int, text: str) -> None:
        self.error = CannotListenError("127.0.0.1", 2525, OSError(code, text))

    def listen(self, factory: object) -> object:
        return fail(self.error)


class ListenerTests(SynchronousTestCase):
    def stop_line(self, code: int, text: str) -> str:
        listener = tap.Listener(
            "smtp.listen", "tcp:2525:interface=127.0.0.1", FailingEndpoint(code, text), None
        )
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as e:
            listener.privilegedStartService()
        self.assertEqual(e.exception.code, 1)
        [line] = err.getvalue().splitlines()
        return line

    def test_port_taken(self) -> None:
        """A listener whose port is taken stops start-up with one line naming the key."""
        self.assertEqual(
            self.stop_line(errno.EADDRINUSE, "Address already in use"),
            "secmail: smtp.listen: cannot listen on tcp:2525:interface=127.0.0.1: Address "
            "already in use (another program, or another secmail, is using that port)",
        )

    def test_no_permission(self) -> None:
        """A privileged port without the capability names what to do."""
        line = self.stop_line(errno.EACCES, "Permission denied")
        self.assertIn("Permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE", line)
