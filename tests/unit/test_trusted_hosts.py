"""``[server] trusted_hosts``: entries and Host header values compared the same way."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_config
from server.trusted_hosts import host_name


def trusted(*entries: str) -> list[str] | None:
    overrides = {"server.trusted_hosts": list(entries)}
    return load_config(overrides=overrides, environ={}).server.trusted_hosts


def test_entries_are_host_names_or_addresses_stored_canonical():
    assert load_config(environ={}).server.trusted_hosts is None
    assert trusted("LocalHost", "[0::1]", "corrigo.internal") == [
        "localhost",
        "::1",
        "corrigo.internal",
    ]
    for bad in ["localhost:8000", "http://corrigo.internal", "a/b", "", "ex ample"]:
        with pytest.raises(ConfigError, match="server.trusted_hosts.0"):
            trusted(bad)


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[0:0::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("[not-an-address]:80", ""),
        ("", ""),
        ("evil.example:8000", "evil.example"),
    ],
)
def test_host_header_values(header, host):
    assert host_name(header) == host
