"""The [admin] table: its default, and an address the portal already uses refused."""

from __future__ import annotations

import pytest

from secmail.config import ConfigError, from_mapping


def test_default_listens_on_loopback_9443() -> None:
    assert from_mapping({}).admin.listen == ("ssl:9443:interface=127.0.0.1",)


def test_bad_endpoint_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^admin\.listen: 'tcp:notaport'"):
        from_mapping({"admin": {"listen": ["tcp:notaport"]}})


def test_the_portals_address_is_refused() -> None:
    """The console is never served on a portal listener: the same endpoint is an error."""
    endpoint = "ssl:8443:interface=127.0.0.1"
    with pytest.raises(ConfigError, match=r"^admin\.listen: .* also in portal\.listen"):
        from_mapping({"admin": {"listen": [endpoint]}, "portal": {"listen": [endpoint]}})


def test_port_zero_is_no_clash() -> None:
    """Port 0 (a free port each, as tests use) on both is two listeners, not one."""
    endpoint = "ssl:0:interface=127.0.0.1"
    settings = from_mapping({"admin": {"listen": [endpoint]}, "portal": {"listen": [endpoint]}})
    assert settings.admin.listen == (endpoint,)
