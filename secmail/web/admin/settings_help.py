# -*- test-case-name: tests.test_admin_settings -*-
"""
The settings page's help texts: the comment above each key (and above some sections) in
etc/secmail.toml, one literal a line of the file. The example file is not installed with the
package, so the page cannot read it, and its English needs the catalogues' Finnish and
Swedish; tests/test_admin_settings.py reads the file and fails when a text here and the
comment there differ, so the two stay one text. Change the file's comment, then the text
here and its translations (docs/translating.md).
"""

from __future__ import annotations

from secmail.web.i18n import N_

#: The sections in the order of the file.
SECTIONS = (
    "gateway",
    "smtp",
    "routes",
    "secure",
    "portal",
    "store",
    "queue",
    "metrics",
    "monitoring",
    "sms",
    "sms.modem",
    "sms.http",
    "sms.smtp",
    "admin",
)
#: The comment above a section's header (only where the file has one).
SECTION_HELP = {
    "metrics": N_(
        "Monitoring: Prometheus metrics (GET /metrics) and the health answers a load balancer or "
        "keepalived asks (GET /livez: the process runs; GET /readyz: this node can take mail now). "
        'Plain HTTP: keep it on a loopback or management address. See README "Monitoring".'
    ),
    "monitoring": N_(
        "The monitoring agent: a JSON health report POSTed over HTTPS to a monitoring service at "
        "start-up and then every report_interval seconds (retried with backoff when it fails). It "
        "holds the version, node, uptime, the readiness checks, queue depth, error counts and the "
        'day\'s counters; never an address, subject, token or message content. README "Monitoring".'
    ),
    "sms": N_(
        "SMS for registered letters' PINs. A registered letter opens only with a 6-digit PIN sent "
        "by SMS to the number in its address (bob@partner.example.0401234567.s). Secure letters to an "  # noqa: E501
        "address in the phone directory (secmail phones add|list|remove) are registered letters too. "  # noqa: E501
        'PINs wait in a durable outbox until a backend takes them; see README "SMS PINs".'
    ),
    "sms.modem": N_("A GSM modem (example)."),
    "sms.http": N_(
        "An HTTP(S) SMS gateway (example). {to} (the number, +358401234567) and {text} are "
        "replaced in url and body, each encoded for where it stands. check-config hides the "
        "URL's password and query values and the header values."
    ),
    "sms.smtp": N_(
        "An e-mail-to-SMS gateway (example): a short plain-text mail goes to this address, with "
        '{to} replaced by the number\'s digits without "+" (358401234567).'
    ),
    "admin": N_(
        'The admin console and its JSON API (README "Admin console"; docs/admin-api.md). Served '
        "only here, never on portal.listen (the portal answers 404 for them), and nothing of the "
        "portal is served here. Keep it on an address only admins reach."
    ),
}
#: The comment above each key, in the file's order; "" where the file has none (the
#: section's text says it). Keys sharing one comment (soft/hard_error_limit) share its text.
HELP = {
    "gateway.hostname": N_(
        "The gateway's own host name: used in the SMTP greeting, Received: headers, "
        "notification addresses and the self-signed certificate. Default: this machine's FQDN."
    ),
    "gateway.data_dir": N_(
        "Where the gateway keeps its SQLite database, master key, spool and generated "
        "certificate. Created with mode 700 on first start."
    ),
    "gateway.bounce_address": N_(
        "Envelope sender of notifications, so that undeliverable ones come back here. "
        "Default: secmail-bounces@<hostname>"
    ),
    "gateway.notification_from": N_(
        "From: address of notifications (the original sender goes in Reply-To). "
        "Default: secmail@<hostname>"
    ),
    "smtp.listen": N_(
        "Twisted endpoint strings to listen on for mail from the organisation's mail "
        "server. Port 25 needs root or CAP_NET_BIND_SERVICE; see the README."
    ),
    "smtp.accepted_networks": N_(
        "Only clients in these networks may hand over mail; everyone else gets 554 at "
        "connect. The default is empty: no client at all. Put your mail server here."
    ),
    "smtp.max_message_size": N_(
        "Largest message accepted, in bytes (advertised as SIZE; over it: 552 5.3.4)."
    ),
    "smtp.max_header_size": N_("Largest header block, in bytes (over it: 552 5.3.4)."),
    "smtp.max_recipients": N_(
        "Recipients per message; the rest get 452 4.5.3 and the client sends them again."
    ),
    "smtp.max_line_length": N_(
        "Longest command line, in bytes (DATA lines may be longer; they count to the size limit)."
    ),
    "smtp.max_hops": N_("More Received: headers than this means a mail loop: 554 5.4.6."),
    "smtp.idle_timeout": N_(
        "Seconds of silence before the gateway closes a connection (421 4.4.2). A command "
        "line must also arrive whole within this time, however slowly its bytes trickle in."
    ),
    "smtp.transaction_timeout": N_(
        "Seconds a whole transaction (MAIL FROM to the final dot of DATA) may take (over "
        "it: 421 4.4.2). 3600 lets a 10 MB message through a link of 3 KB/s."
    ),
    "smtp.min_data_rate": N_(
        "Bytes per second a client must average during a transaction, counted after its "
        "first idle_timeout seconds (slower: 421 4.4.2). Stops a client dripping a byte "
        "at a time."
    ),
    "smtp.junk_command_limit": N_(
        "NOOP, RSET, VRFY, EXPN, HELO and EHLO commands allowed between two delivered "
        "messages (more: 421 4.7.0), as Postfix's smtpd_junk_command_limit."
    ),
    "smtp.max_connections_per_client": N_(
        "Simultaneous connections from one client address (more: 421 4.7.0)."
    ),
    "smtp.soft_error_limit": N_(
        "Errors in one session before the gateway slows down / hangs up (421 4.7.0)."
    ),
    "smtp.hard_error_limit": N_(
        "Errors in one session before the gateway slows down / hangs up (421 4.7.0)."
    ),
    "smtp.tls_certificate": N_(
        "PEM certificate (with chain) and key for STARTTLS and the portal. When unset, a "
        "self-signed certificate is made in <data_dir>/tls/ on first start."
    ),
    "smtp.tls_key": N_(
        "PEM certificate (with chain) and key for STARTTLS and the portal. When unset, a "
        "self-signed certificate is made in <data_dir>/tls/ on first start."
    ),
    "smtp.starttls": N_("Offer STARTTLS to clients (TLS 1.2 or newer)."),
    "routes.outgoing": N_(
        'Where notifications and relayed plain mail go: "mx" (direct to the Internet by '
        'MX lookup, opportunistic STARTTLS) or "smtp://host:port" (a relay host; its '
        "certificate is verified when it offers STARTTLS)."
    ),
    "routes.incoming": N_(
        "The internal mail server, where mail for incoming_domains goes (replies from "
        "the portal, bounces to your senders). Needed when incoming_domains is set."
    ),
    "routes.incoming_domains": N_(
        "Your organisation's own domains: the only ones the portal may send into."
    ),
    "routes.relay_ca_file": N_(
        "PEM file of the CAs that sign the relay hosts' certificates (checked when a relay "
        "host offers STARTTLS). Empty: the system's trusted CAs."
    ),
    "routes.domains": N_("Per-domain routes override the defaults above (example)."),
    "secure.mode": N_(
        '"marked": the mail server sends only marked mail (bob@partner.example.s) here; '
        "other recipients are refused unless in incoming_domains. "
        '"all": every outgoing mail comes here; unmarked mail is relayed unchanged, and '
        "a subject containing subject_keyword makes the whole message secure."
    ),
    "secure.extension": N_(
        "The marking added to the recipient's domain: bob@partner.example.s is a secure "
        "letter, bob@partner.example.0401234567.s a registered letter (PIN by SMS)."
    ),
    "secure.default_country_code": N_(
        "Country calling code for national numbers in registered-letter addresses "
        "(0401234567 becomes +358401234567)."
    ),
    "secure.retention_days": N_(
        "Days a secure message stays readable on the portal before it is deleted. The "
        "notification tells the recipient the date and time (UTC) until which it can be read."
    ),
    "secure.audit_days": N_(
        "Days the audit trail (who opened, replied, got a PIN, ...: message events, no content) is "
        "kept, also after the message itself is deleted; at least retention_days."
    ),
    "secure.subject_keyword": N_(
        'In mode "all": this word in the subject makes the message secure; it is '
        "removed from the subject the recipient sees."
    ),
    "secure.notification_shows_subject": N_(
        "Put the original subject in the notification's subject (off: it may be confidential)."
    ),
    "portal.listen": N_(
        'Where the HTTPS portal listens. "ssl:PORT" without privateKey= uses the '
        'certificate above; use "tcp:..." behind a TLS-terminating reverse proxy.'
    ),
    "portal.url": N_("The public address recipients see in notification links."),
    "portal.compose_directory": N_(
        "Addresses an outsider may choose from on <url>/compose to write a secure message to "
        "the organisation (each must be in routes.incoming_domains). Empty: only direct links "
        "<url>/compose/<address> work, and only to incoming_domains."
    ),
    "portal.max_upload_size": N_(
        "Largest request the portal takes (a reply or a new message with its attachments), bytes. "
        'The pages show it in decimal megabytes, rounded down: 10240000 is "10.2 MB".'
    ),
    "portal.brand_name": N_(
        "The name in the portal's header and the notification's: its first line, its header "
        'bar, and its From ("Alice Example via Secure mail").'
    ),
    "portal.brand_colour": N_(
        "The header and button colour of the portal and the notification, written #rrggbb."
    ),
    "portal.logo_file": N_(
        "A logo for the header of the portal and the notification: a PNG or JPEG file of at most "
        "100 kB (SVG is refused: it can carry script), read once at start-up. Served at "
        "<url>/static/logo; every notification carries it as an inline image (mail clients block "
        "remote ones), so keep it small: it is shown 40 pixels high. Empty: no logo."
    ),
    "portal.verification_phrase": N_(
        "A short phrase (at most 40 characters) chosen by the organisation, shown in every "
        'notification ("The sender\'s verification phrase: ...") and on every portal page, so that '
        "a recipient can tell a real notification from a copy made by someone else. Empty: no "
        "phrase is shown. Change it if it leaks."
    ),
    "portal.languages": N_(
        'The portal\'s languages, from: "en" (English), "fi" (Finnish), "sv" (Swedish). The page '
        "follows the browser's Accept-Language, or the visitor's choice; else the first listed."
    ),
    "portal.compose_codes_per_mailbox": N_(
        "D-Compose code mails (an outsider proving their address). Limits so that the portal "
        "cannot be made to flood a mailbox, or anyone, with code mails: at most this many to one "
        "mailbox in 24 hours (addresses are counted lower-cased and without a +tag, so "
        "Olga+x@Example.com and olga@example.com are one mailbox) ..."
    ),
    "portal.compose_codes_per_client": N_(
        "... for one client in an hour (its IPv4 address, or the /64 of an IPv6 address; behind a "
        "reverse proxy every client has the proxy's address, so raise this there) ..."
    ),
    "portal.compose_codes_per_hour": N_(
        "... and to everyone in an hour, and in 24 hours (at least compose_codes_per_hour)."
    ),
    "portal.compose_codes_per_day": N_(
        "... and to everyone in an hour, and in 24 hours (at least compose_codes_per_hour)."
    ),
    "store.database": N_(
        '"sqlite:PATH" or a PostgreSQL URL. When unset: sqlite:<data_dir>/secmail.sqlite, '
        "so moving data_dir moves the database with it."
    ),
    "store.master_key_file": N_(
        "The master key that wraps every message key; keep it outside the database and "
        "back it up. When unset, <data_dir>/master.key is made on first start; when "
        "set, the file must exist (make one with: secmail keys generate FILE). "
        "The file is a key ring: the first key seals new rows, every key opens what it "
        "sealed. `secmail keys rotate` puts a new key first (a running gateway picks it up "
        "within a minute and re-wraps every message key); `secmail keys status` shows what "
        "each key still protects; `secmail keys retire ID` removes one nothing uses. In a "
        "cluster every node needs the same file."
    ),
    "queue.retry_initial": N_(
        "Seconds before the first retry of a temporary failure; doubles each time..."
    ),
    "queue.retry_max": N_("...up to this many seconds between tries."),
    "queue.lifetime": N_("Seconds a delivery may stay in the queue before it is bounced (5 days)."),
    "queue.poll_interval": N_("Seconds between queue scans (new mail is sent at once regardless)."),
    "queue.concurrency": N_("Deliveries in progress at the same time."),
    "queue.connect_timeout": N_("Seconds to wait for a TCP connection to a mail server."),
    "metrics.listen": N_("Twisted endpoint strings; [] serves none of them."),
    "monitoring.report_url": N_('Where reports go: an https:// URL; "" (default) sends none.'),
    "monitoring.report_ca_file": N_(
        'A PEM file with the CA certificates that may sign the service\'s certificate; "" (default): '  # noqa: E501
        "the system's CAs. The certificate is always verified."
    ),
    "monitoring.report_interval": N_("Seconds between reports (at least 1)."),
    "monitoring.report_token": N_(
        'Sent as "Authorization: Bearer <token>"; "" sends none. Shown as *** by check-config.'
    ),
    "monitoring.statistics_to": N_(
        "The statistics mail: a plain-text summary of the daily statistics of all nodes (what "
        '`secmail stats` shows) to this address; "" (default) sends none.'
    ),
    "monitoring.statistics_every": N_(
        '"week" (each Monday, for the week before) or "month" (on the 1st, for the month before).'
    ),
    "sms.order": N_(
        'How registered letters\' PINs go out by SMS: any of "modem" (a GSM modem on a serial '
        'port), "http" (an HTTP(S) SMS gateway such as Kannel) and "smtp" (an e-mail-to-SMS '
        "gateway), tried in this order; when one fails the next is tried. Each one listed needs "
        "its own [sms.<name>] section below. Empty (default): SMS is off."
    ),
    "sms.pin_text": N_(
        "The PIN text per language (en, fi, sv), replacing the built-in one (example below). "
        "{pin} is required; {minutes} (how long the PIN works) and {brand} (portal.brand_name) "
        "may be used. Keep it within 160 GSM characters (70 with other letters) to stay one SMS."
    ),
    "sms.modem.device": N_("The modem's serial port."),
    "sms.modem.baudrate": N_("Serial speed in bits per second (default 115200)."),
    "sms.modem.sim_pin": N_(
        'The SIM\'s PIN, 4 to 8 digits; "" (default) for a SIM that asks for none. '
        "Shown as *** by check-config."
    ),
    "sms.http.url": N_(
        "(Kannel's sendsms; charset=UTF-8 keeps ä ö å; &coding=2 for letters outside GSM: docs/sms.md.)"  # noqa: E501
    ),
    "sms.http.method": N_('"GET" (default) or "POST".'),
    "sms.http.body": N_(
        'A body for method = "POST" (example): a form ("to={to}&text={text}") or JSON (\'{"to": "{to}", "text": "{text}"}\').'  # noqa: E501
    ),
    "sms.http.body_type": N_(
        '"form" or "json"; by default a body starting with { or [ is JSON, any other a form.'
    ),
    "sms.http.headers": N_(
        "Extra request headers (example), such as a token; no placeholders here."
    ),
    "sms.http.success": N_(
        "A regular expression the gateway's answer must match for the SMS to count as sent "
        '(default: any 2xx answer counts). For Kannel "^[03]: " (0: accepted, 3: queued by Kannel).'
    ),
    "sms.http.timeout": N_("Seconds to wait for the gateway's answer (default 30)."),
    "sms.smtp.address": "",
    "admin.listen": N_(
        'Where the console listens. "ssl:PORT" without privateKey= uses the certificate in '
        "[smtp] (the portal's); each endpoint must differ from every portal.listen one."
    ),
}
