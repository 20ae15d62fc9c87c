# -*- test-case-name: tests.test_monitoring -*-
"""
The gateway's Prometheus metrics, in one registry of their own (L{REGISTRY}).

Names start with C{secmail_}, are in base units (seconds, bytes) and counters end in
C{_total}; labels are few and bounded (kinds, results, reasons; never addresses, numbers or
ids). Every figure is counted where its event happens, so a scrape reads memory only; the
queue's figures come from one cheap query every C{[queue] poll_interval} (at least 1 s)
(L{secmail.monitoring.gauges.QueueGauges}). A label C{tenant} is left free for customer
environments.

Counters restart at zero with the process, as Prometheus expects (C{rate()} handles it).
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from secmail import __version__

# No C{*_created} series beside each counter: they double the exposition and tell nothing
# that process_start_time_seconds does not.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "secmail_build_info",
    "Always 1; the labels say which secmail runs.",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# SMTP intake
SMTP_SESSIONS = Counter(
    "secmail_smtp_sessions", "SMTP sessions opened by mail servers.", registry=REGISTRY
)
SMTP_MESSAGES = Counter(
    "secmail_smtp_messages",
    "Messages taken in, by kind: relay (plain), letter (secure), registered (secure with a PIN)."
    " A message with recipients of several kinds counts once for each kind.",
    ["kind"],
    registry=REGISTRY,
)
SMTP_REFUSED = Counter(
    "secmail_smtp_refused",
    "Commands or messages refused at intake, by reason.",
    ["reason"],
    registry=REGISTRY,
)

# Outgoing mail
DELIVERIES = Counter(
    "secmail_deliveries",
    "Recipients of queue rows tried, by the row's kind (relay, notification, bounce, code,"
    " sms, statistics, ...) and result (sent, deferred, bounced, quarantined).",
    ["kind", "result"],
    registry=REGISTRY,
)
BOUNCES = Counter(
    "secmail_bounces", "Bounces (delivery status notifications) written.", registry=REGISTRY
)
QUEUE_ROWS = Gauge(
    "secmail_queue_rows",
    "Rows in the outbound queue, by state (waiting, leased, quarantined).",
    ["state"],
    registry=REGISTRY,
)
QUEUE_OLDEST = Gauge(
    "secmail_queue_oldest_age_seconds",
    "Age of the oldest row in the outbound queue that is not quarantined (0: none).",
    registry=REGISTRY,
)

# The portal
PORTAL_OPENS = Counter(
    "secmail_portal_opens", "Letters opened in the portal (a session begun).", registry=REGISTRY
)
PORTAL_READS = Counter("secmail_portal_reads", "Letters' reading pages shown.", registry=REGISTRY)
PORTAL_CODES = Counter(
    "secmail_portal_codes",
    "One-time codes sent, by kind (pin: an SMS PIN, email: an e-mail code, compose: a"
    " D-Compose code).",
    ["kind"],
    registry=REGISTRY,
)
PORTAL_CODE_FAILURES = Counter(
    "secmail_portal_code_failures",
    "Wrong PINs or codes entered, by kind (pin, email, compose).",
    ["kind"],
    registry=REGISTRY,
)

PORTAL_REPLIES = Counter(
    "secmail_portal_replies",
    "Replies and forwards sent from the portal.",
    registry=REGISTRY,
)
COMPOSE_MESSAGES = Counter(
    "secmail_compose_messages",
    "Messages written by outsiders with D-Compose and sent in.",
    registry=REGISTRY,
)

# SMS
SMS = Counter(
    "secmail_sms",
    "SMS handed to a backend, by backend (modem, http, smtp) and result (sent, failed).",
    ["backend", "result"],
    registry=REGISTRY,
)

# The database
DB_COMMIT = Histogram(
    "secmail_db_commit_seconds",
    "Time to run and commit one batch of database work.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
DB_ERRORS = Counter(
    "secmail_db_errors",
    "Database batches that failed (could not reach the database or commit).",
    registry=REGISTRY,
)

for _kind in ("relay", "letter", "registered"):
    SMTP_MESSAGES.labels(_kind)
for _state in ("waiting", "leased", "quarantined"):
    QUEUE_ROWS.labels(_state)
