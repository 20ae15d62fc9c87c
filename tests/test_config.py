"""Configuration: the example runs as it is; every bad value is one clear error naming its key."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import pytest

from secmail import config
from secmail.config import ConfigError, Route

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "etc", "secmail.toml")


def load_text(text: str) -> config.Settings:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return config.load(f.name)
    finally:
        os.unlink(f.name)


def test_example_loads() -> None:
    """The shipped example configuration is valid and sets the documented values."""
    settings = config.load(EXAMPLE)
    assert settings.smtp.listen == ("tcp:2525:interface=127.0.0.1",)
    assert str(settings.smtp.accepted_networks[0]) == "127.0.0.0/8"
    assert settings.routes.outgoing == config.MX


def test_example_database_follows_data_dir() -> None:
    """In the example, data_dir is the one key to change: the SQLite database moves with it."""
    with open(EXAMPLE) as f:
        text = f.read()
    assert 'data_dir = "secmail-data"' in text
    settings = load_text(text.replace('data_dir = "secmail-data"', 'data_dir = "/srv/mail-gw"', 1))
    assert settings.store.database == "sqlite:/srv/mail-gw/secmail.sqlite"
    assert settings.store.master_key_file == "/srv/mail-gw/master.key"


def test_example_documents_every_key() -> None:
    """Every key the loader knows appears in etc/secmail.toml."""
    with open(EXAMPLE) as f:
        text = f.read()
    for section, keys in config.SCHEMA.items():
        assert f"[{section}]" in text, section
        for key in keys:
            documented = f"\n{key} =" in text or f"# {key} =" in text
            documented = documented or f"[{section}.{key}]" in text
            assert documented, f"{section}.{key}"


def test_embedded_defaults() -> None:
    """Without a file the gateway runs on defaults: SQLite under data_dir, loopback ports."""
    settings = config.load(None)
    assert settings.store.database.startswith("sqlite:")
    assert settings.smtp.accepted_networks == ()
    assert settings.smtp.max_message_size == 10_240_000
    assert settings.queue.retry_initial == 300 and settings.queue.retry_max == 4000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smtp]\nbogus = 1\n", "smtp.bogus: unknown key"),
        ("[nope]\n", "[nope]: unknown section"),
        ('[smtp]\nmax_message_size = "big"\n', "smtp.max_message_size: must be a whole number"),
        ("[smtp]\nmax_message_size = -5\n", "smtp.max_message_size: must be greater than 0"),
        ('[smtp]\nlisten = ["tcp:notaport"]\n', "smtp.listen: 'tcp:notaport' is not a valid"),
        ('[smtp]\naccepted_networks = ["10.0.0.0/33"]\n', "smtp.accepted_networks:"),
        ('[routes]\noutgoing = "http://x"\n', "routes.outgoing: 'http://x' must be \"mx\""),
        ('[secure]\nmode = "some"\n', 'secure.mode: must be "marked" or "all"'),
        ('[store]\ndatabase = "mysql://x"\n', "store.database:"),
        ('[store]\nmaster_key_file = "/nonexistent/key"\n', "store.master_key_file: file"),
        ('[smtp]\ntls_certificate = "/nonexistent.pem"\n', "smtp.tls_certificate: file"),
        ('[routes]\nincoming_domains = ["example.com"]\n', "routes.incoming: needed"),
        ("[smtp\n", "not valid TOML"),
        ('[portal]\nurl = "ftp://x"\n', "portal.url:"),
        ("[queue]\nretry_initial = 500\nretry_max = 100\n", "queue.retry_max"),
        ("[secure]\naudit_days = 7\n", "secure.audit_days: 7 is less than secure.retention_days"),
        ('[sms]\norder = ["pigeon"]\n', "sms.order: 'pigeon' is not a backend"),
        ('[sms.pin_text]\nxx = "{pin}"\n', "sms.pin_text: 'xx' is not one of en, fi, sv"),
        ('[sms.pin_text]\nen = "Code {{pin}}"\n', "sms.pin_text: en: the text must hold {pin}"),
        ('[sms.pin_text]\nen = "{pin} {who}"\n', "sms.pin_text: en: unknown placeholder {who}"),
        ('[sms.pin_text]\nfi = "{pin"\n', "sms.pin_text: fi: not a valid template"),
        ('[sms]\norder = ["http", "http"]\n', "sms.order: 'http' listed more than once"),
        ('[sms]\norder = ["http"]\n', 'sms.order: "http" needs an [sms.http] section'),
        (
            "[sms]\nbogus = 1\n",
            "sms.bogus: unknown key (known in [sms]: order, pin_text, [sms.modem]",
        ),
        ('[sms.modem]\ndevice = "/dev/ttyS0"\nbogus = 1\n', "sms.modem.bogus: unknown key"),
        ("[sms.modem]\nbaudrate = 9600\n", "sms.modem.device: missing"),
        ('[sms.modem]\ndevice = "/dev/ttyS0"\nbaudrate = 0\n', "sms.modem.baudrate: must be"),
        ('[sms.modem]\ndevice = "x"\nsim_pin = "12a"\n', "sms.modem.sim_pin: must be 4 to 8"),
        ('[sms.modem]\ndevice = "x"\nsim_pin = "123456789"\n', "sms.modem.sim_pin:"),
        ("[sms]\nmodem = 5\n", "sms.modem: must be a table ([sms.modem])"),
        ('[sms.http]\nmethod = "GET"\n', "sms.http.url: missing"),
        ('[sms.http]\nurl = "ftp://gw/{to}/{text}"\n', "sms.http.url: must be http(s)"),
        (
            '[sms.http]\nurl = "https://gw/?to={to}&text={text}"\nmethod = "PUT"\n',
            "sms.http.method",
        ),
        (
            '[sms.http]\nurl = "https://gw/?to={to}&t={text}"\nheaders = { X = 1 }\n',
            "sms.http.headers",
        ),
        ('[sms.http]\nurl = "https://gw/?to={to}&t={text}"\ntimeout = 0\n', "sms.http.timeout"),
        ('[sms.http]\nurl = "https://gw/?to={to}&t={text}"\nsuccess = "("\n', "sms.http.success"),
        ('[sms.http]\nurl = "https://gw/?to={to}"\n', "sms.http: {text} appears in neither"),
        (
            '[sms.smtp]\naddress = "sms@example.net"\n',
            "sms.smtp.address: 'sms@example.net' must hold {to}",
        ),
        ('[sms.smtp]\naddress = "{to}@{host}"\n', "sms.smtp.address:"),
        ('[sms.smtp]\naddress = "{to}"\n', "sms.smtp.address: '{to}' is not an e-mail address"),
        ("[sms.smtp]\n", "sms.smtp.address: missing"),
    ],
)
def test_bad_values(text: str, message: str) -> None:
    """A bad configuration stops with one line naming the key and the problem."""
    with pytest.raises(ConfigError) as e:
        load_text(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file() -> None:
    """A configuration file that does not exist is named in the error."""
    with pytest.raises(ConfigError, match="/no/such.toml: configuration file not found"):
        config.load("/no/such.toml")


def test_smtp_rate_and_junk_limits() -> None:
    """[smtp] transaction_timeout, min_data_rate and junk_command_limit load; defaults generous."""
    defaults = config.load(None).smtp
    assert (defaults.transaction_timeout, defaults.min_data_rate, defaults.junk_command_limit) == (
        3600,
        500,
        100,
    )
    smtp = load_text(
        "[smtp]\ntransaction_timeout = 60\nmin_data_rate = 10\njunk_command_limit = 5\n"
    ).smtp
    assert (smtp.transaction_timeout, smtp.min_data_rate, smtp.junk_command_limit) == (60, 10, 5)
    for key in ("transaction_timeout", "min_data_rate", "junk_command_limit"):
        with pytest.raises(ConfigError, match=f"smtp.{key}: must be greater than 0"):
            load_text(f"[smtp]\n{key} = 0\n")


def test_routes() -> None:
    """Per-domain routes override the incoming route, which overrides the outgoing one."""
    settings = load_text(
        '[routes]\noutgoing = "smtp://relay.example:2525"\nincoming = "smtp://mail.corp.example"\n'
        'incoming_domains = ["corp.example"]\n[routes.domains]\n"branch.example" = "smtp://b:26"\n'
    )
    assert settings.routes.for_domain("CORP.example") == Route(False, "mail.corp.example", 25)
    assert settings.routes.for_domain("branch.example") == Route(False, "b", 26)
    assert settings.routes.for_domain("partner.example") == Route(False, "relay.example", 2525)


def test_describe_masks_password() -> None:
    """check-config output never shows the database password."""
    settings = load_text('[store]\ndatabase = "postgresql://u:hunter2@db/x"\n')
    text = "\n".join(config.describe(settings))
    assert "hunter2" not in text
    assert "postgresql://u:***@db/x" in text


def test_compose_directory_must_be_internal() -> None:
    """The compose directory may list only the organisation's own addresses."""
    base = '[routes]\nincoming = "smtp://mail.corp.example"\nincoming_domains = ["corp.example"]\n'
    ok = load_text(base + '[portal]\ncompose_directory = ["sales@corp.example"]\n')
    assert ok.portal.compose_directory == ("sales@corp.example",)
    with pytest.raises(ConfigError, match="portal.compose_directory: evil@else.example"):
        load_text(base + '[portal]\ncompose_directory = ["evil@else.example"]\n')


def test_compose_code_limits() -> None:
    """The D-Compose code limits have defaults, take whole numbers, and a day holds an hour."""
    defaults = load_text("").portal
    assert (
        defaults.compose_codes_per_mailbox,
        defaults.compose_codes_per_client,
        defaults.compose_codes_per_hour,
        defaults.compose_codes_per_day,
    ) == (5, 10, 60, 300)
    assert (
        load_text("[portal]\ncompose_codes_per_client = 50\n").portal.compose_codes_per_client == 50
    )
    with pytest.raises(ConfigError, match="portal.compose_codes_per_mailbox: must be greater"):
        load_text("[portal]\ncompose_codes_per_mailbox = 0\n")
    with pytest.raises(ConfigError, match="portal.compose_codes_per_day: 10 is less than"):
        load_text("[portal]\ncompose_codes_per_day = 10\n")


PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG_BYTES = b"\xff\xd8\xff\xe0" + b"\x00" * 16


def test_portal_branding_defaults() -> None:
    """Without settings the portal is "Secure mail" in blue, no logo, no phrase, three languages."""
    portal = config.load(None).portal
    assert portal.brand_name == "Secure mail"
    assert portal.brand_colour == "#1f5fae"
    assert portal.logo_file == "" and portal.verification_phrase == ""
    assert portal.languages == ("en", "fi", "sv")


@pytest.mark.parametrize(
    ("data", "media_type"), [(PNG_BYTES, "image/png"), (JPEG_BYTES, "image/jpeg")]
)
def test_logo_png_or_jpeg(tmp_path: Any, data: bytes, media_type: str) -> None:
    """A PNG or JPEG logo is accepted and its type found from its bytes, not its name."""
    logo = tmp_path / "logo.svg"
    logo.write_bytes(data)
    settings = load_text(f'[portal]\nlogo_file = "{logo}"\n')
    assert settings.portal.logo_file == str(logo)
    assert settings.portal.logo_type == media_type


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"GIF89a\x01\x00\x01\x00",
        b"",
    ],
)
def test_logo_other_formats_refused(tmp_path: Any, data: bytes) -> None:
    """A logo that is not a PNG or JPEG (an SVG could carry script) stops the start."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(data)
    with pytest.raises(ConfigError, match=r"^portal.logo_file: .* is not a PNG or JPEG image"):
        load_text(f'[portal]\nlogo_file = "{logo}"\n')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[portal]\nbrand_colour = "blue"\n', "portal.brand_colour: 'blue' must be a colour"),
        ('[portal]\nbrand_colour = "#12345"\n', "portal.brand_colour:"),
        ('[portal]\nbrand_colour = "#123456;x"\n', "portal.brand_colour:"),
        ('[portal]\nbrand_name = ""\n', "portal.brand_name: must not be empty"),
        ('[portal]\nverification_phrase = "' + "x" * 41 + '"\n', "portal.verification_phrase:"),
        ('[portal]\nverification_phrase = "a\\u0007b"\n', "portal.verification_phrase:"),
        ('[portal]\nlanguages = ["en", "de"]\n', "portal.languages: 'de' is not one of en, fi, sv"),
        ("[portal]\nlanguages = []\n", "portal.languages: must name at least one"),
        ('[portal]\nlogo_file = "/nonexistent/logo.png"\n', "portal.logo_file: cannot read"),
    ],
)
def test_bad_portal_branding(text: str, message: str) -> None:
    """Bad branding values stop with one line naming the key."""
    with pytest.raises(ConfigError) as e:
        load_text(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_portal_branding_values() -> None:
    """The colour is normalised to lower case; the phrase's spaces are tidied."""
    settings = load_text(
        '[portal]\nbrand_colour = "#AA3300"\nverification_phrase = "  blue   heron "\n'
        'languages = ["fi", "sv"]\nbrand_name = "Example Oy"\n'
    )
    assert settings.portal.brand_colour == "#aa3300"
    assert settings.portal.verification_phrase == "blue heron"
    assert settings.portal.languages == ("fi", "sv")
    assert settings.portal.brand_name == "Example Oy"


def test_values_for_components() -> None:
    """The small values components get carry the keys of the sections they are built from."""
    settings = load_text(
        '[gateway]\nhostname = "gw.example"\nbounce_address = "b@gw.example"\n'
        'notification_from = "n@gw.example"\n[portal]\nurl = "https://p.example/"\n'
        'brand_name = "Example Oy"\nbrand_colour = "#aa3300"\nverification_phrase = "heron"\n'
        "[secure]\nretention_days = 10\naudit_days = 20\nnotification_shows_subject = true\n"
    )
    identity = config.GatewayIdentity("gw.example", "b@gw.example", "n@gw.example")
    assert settings.identity == identity
    assert settings.branding == config.Branding(
        name="Example Oy",
        colour="#aa3300",
        logo_file="",
        logo_type="",
        verification_phrase="heron",
        portal_url="https://p.example",
    )
    assert settings.retention == config.Retention(retention_days=10, audit_days=20)
    assert settings.notification_texts == config.NotificationTexts(
        identity=identity, branding=settings.branding, retention_days=10, shows_subject=True
    )


def test_sms_off_by_default() -> None:
    """Without an [sms] section no backend is configured: SMS is off."""
    sms = config.load(None).sms
    assert sms == config.SmsSettings(order=(), modem=None, http=None, smtp_address=None)
    assert config.load(EXAMPLE).sms.order == ()


def test_sms_backends() -> None:
    """[sms.modem], [sms.http] and [sms.smtp] are sub-tables of [sms], built in the given order."""
    settings = load_text(
        '[sms]\norder = ["http", "smtp", "modem"]\n'
        '[sms.modem]\ndevice = "/dev/ttyUSB0"\nsim_pin = "1234"\n'
        '[sms.http]\nurl = "https://gw.example/send"\nmethod = "post"\n'
        'body = \'{"to": "{to}", "text": "{text}"}\'\nheaders = { Authorization = "Bearer t" }\n'
        'success = "^OK"\ntimeout = 5\n'
        '[sms.smtp]\naddress = "{to}@sms.example.net"\n'
    )
    sms = settings.sms
    assert sms.order == ("http", "smtp", "modem")
    assert sms.modem == config.ModemSettings(device="/dev/ttyUSB0", baudrate=115200, sim_pin="1234")
    assert sms.http is not None and sms.http.method == "POST" and sms.http.body_type == "json"
    assert sms.http.headers == {"Authorization": "Bearer t"} and sms.http.timeout == 5
    assert sms.smtp_address == "{to}@sms.example.net"


def test_sms_section_without_order_is_checked_but_unused() -> None:
    """A backend section not named in sms.order is still checked, and SMS stays off."""
    settings = load_text('[sms.modem]\ndevice = "/dev/ttyS1"\nbaudrate = 9600\n')
    assert settings.sms.order == ()
    assert settings.sms.modem == config.ModemSettings(device="/dev/ttyS1", baudrate=9600)


def test_dotted_section_name_is_not_a_sub_table() -> None:
    """A quoted ["sms.modem"] table is refused rather than read as [sms.modem]."""
    with pytest.raises(ConfigError, match=r"\[sms.modem\]: unknown section"):
        load_text('["sms.modem"]\ndevice = "x"\n')


def test_describe_masks_sms_secrets() -> None:
    """check-config hides the SIM PIN, the gateway URL's password and query values, and headers."""
    settings = load_text(
        '[sms.modem]\ndevice = "/dev/ttyUSB0"\nsim_pin = "9876"\n'
        '[sms.http]\nurl = "https://u:pw@gw.example/s?password=hunter2&to={to}&text={text}"\n'
        'headers = { Authorization = "Bearer sekrit" }\n'
    )
    text = "\n".join(config.describe(settings))
    for secret in ("9876", "hunter2", ":pw@", "sekrit"):
        assert secret not in text
    assert "9876" not in repr(settings.sms)
    assert "sms.modem.sim_pin = '***'" in text
    assert "sms.modem.device = '/dev/ttyUSB0'" in text
    assert "sms.http.url = 'https://u:***@gw.example/s?password=***&to={to}&text={text}'" in text


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("key=apikey123&to={to}&text={text}", "key=***&to={to}&text={text}"),
        (
            '{"auth": {"key": "apikey123"}, "to": "{to}", "text": "{text}", "n": [1]}',
            '{"auth": {"key": "***"}, "to": "{to}", "text": "{text}", "n": ["***"]}',
        ),
    ],
)
def test_describe_masks_sms_body(body: str, shown: str) -> None:
    """A POST body template may carry an API key: its values are hidden, placeholders kept."""
    settings = config.from_mapping(
        {"sms": {"http": {"url": "https://gw.example/s", "method": "POST", "body": body}}}
    )
    text = "\n".join(config.describe(settings))
    assert f"sms.http.body = {shown!r}" in text
    assert "apikey123" not in text
    assert "apikey123" not in repr(settings)


def test_example_sms_sections_load_when_uncommented() -> None:
    """The commented [sms.*] examples in etc/secmail.toml are valid once uncommented."""
    with open(EXAMPLE) as f:
        text = f.read()
    head, sms = text.split("[sms]\n")
    lines = [
        line[2:] if re.match(r"# (\[sms\.|[a-z_]+ = )", line) else line
        for line in sms.splitlines()
        if not line.startswith(("# body", "# body_type"))  # these need method = "POST"
    ]
    uncommented = "\n".join(lines).replace("order = []", 'order = ["modem", "http", "smtp"]')
    settings = load_text(head + "[sms]\n" + uncommented)
    assert settings.sms.order == ("modem", "http", "smtp")
    assert settings.sms.modem is not None and settings.sms.http is not None
    assert settings.sms.smtp_address == "{to}@sms.example.net"


# --- the logo's bytes, which every notification carries (issue 12, item 9) -----------------


def test_logo_bytes_read_at_load_time(tmp_path: Any) -> None:
    """The logo is read once, when the file is loaded; check-config shows only its size."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG_BYTES)
    settings = load_text(f'[portal]\nlogo_file = "{logo}"\n')
    assert settings.portal.logo == PNG_BYTES == settings.branding.logo
    assert settings.notification_texts.branding.logo == PNG_BYTES
    lines = config.describe(settings)
    assert f"portal.logo = '{len(PNG_BYTES)} bytes'" in lines
    assert not any("PNG" in line for line in lines)


def test_logo_too_big_for_notifications_refused(tmp_path: Any) -> None:
    """A logo over MAX_LOGO_BYTES stops the start with one line naming the key and the limit."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG_BYTES + b"\x00" * config.MAX_LOGO_BYTES)
    with pytest.raises(
        ConfigError, match=r"^portal.logo_file: .* is larger than 100 kB; every notification"
    ):
        load_text(f'[portal]\nlogo_file = "{logo}"\n')
    logo.write_bytes(PNG_BYTES + b"\x00" * (config.MAX_LOGO_BYTES - len(PNG_BYTES)))
    assert len(load_text(f'[portal]\nlogo_file = "{logo}"\n').portal.logo) == config.MAX_LOGO_BYTES
