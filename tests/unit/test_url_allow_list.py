"""The URL allow-list (decoding/refinement/urls.py): bypass attempts, normalisation, entries.

Requests are validated the way the server does it (``parse_correction`` with the deployment's
``url_prefixes`` in the context), so each row is an attack a client can send.
"""

from __future__ import annotations

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import VERIFIER_TYPES_CONTEXT
from decoding.refinement.urls import parse_prefix, parse_url
from server.config import ConfigError, load_config
from server.refinement.verifiers import SERVER_VERIFIER_TYPES

PREFIXES = [
    "http://127.0.0.1:",  # any port on 127.0.0.1 (the legacy spelling of :*)
    "https://hooks.example.com",
    "http://10.0.0.5:8080/ok",
    "http://[::1]:8000/v1/",
]
# webhook is one of a server's verifier types (server/refinement/verifiers.py).
CONTEXT = {"verifier_url_prefixes": PREFIXES, VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES}

REFUSED = [
    # userinfo: the host is what follows the '@'
    "http://127.0.0.1:@evil.example/",
    "http://127.0.0.1:8080@evil.example/",
    "https://hooks.example.com@evil.example/",
    "https://hooks.example.com:443@evil.example/",
    "http://127.0.0.1:80%40evil.example/",
    # a longer host name, another port
    "https://hooks.example.com.evil.example/",
    "https://hooks.example.comevil.example/",
    "https://HOOKS.example.com.evil.example/",
    "https://hooks.example.com:444/",
    "https://hooks.example.com\u3002evil.example/",  # an ideographic full stop is a dot
    "http://127.0.0.10:80/",
    # the path leaves the entry's path
    "http://10.0.0.5:8080/ok/../admin",
    "http://10.0.0.5:8080/ok/./../admin",
    "http://10.0.0.5:8080/ok/%2e%2e/admin",
    "http://10.0.0.5:8080/ok/%2E%2E/admin",
    "http://10.0.0.5:8080/ok/.%2e/admin",
    "http://10.0.0.5:8080/ok//../admin",
    "http://10.0.0.5:8080/okay",
    "http://10.0.0.5:8080/ok/..%2fadmin",
    "http://10.0.0.5:8080/ok/..%5cadmin",
    "http://10.0.0.5:8080/ok/..;/admin",
    "HTTP://10.0.0.5:8080/ok/../admin",
    "http://10.0.0.5:8080/OK",
    # characters parsers disagree on
    "http://10.0.0.5:8080/ok\\..\\admin",
    "https://hooks.example.com\\@evil.example/",
    "http://127.0.0.1:80 @evil.example/",
    "http://127.0.0.1:80/\n",
    "http://127.0.0.1:80/\x00",
    "http://127.0.0.1:80/a\tb",
    "http://127.0.0.1:80#@evil.example/",
    "http://127.0.0.1.:80/",
    "http://127.0.0.1%2e:80/",
    # other addresses of the same machine are other hosts
    "http://[::ffff:127.0.0.1]:80/",
    "http://[::1]:80/",
    "http://localhost:80/",
    "http://0.0.0.0:80/",
    # not an address, not a port
    "http://256.0.0.1:80/",
    "http://1.2.3.4.5:80/",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:0x50/",
    "http://127.0.0.1:0/",
    "http://[::1%25lo]:8000/v1/",
    "ftp://127.0.0.1:21/",
    "//127.0.0.1:80/",
    "http:127.0.0.1:80/",
]

ALLOWED = {
    "http://127.0.0.1:9/v1": "http://127.0.0.1:9/v1",
    "HTTP://127.0.0.1:9/v1": "http://127.0.0.1:9/v1",
    "http://127.0.0.1/": "http://127.0.0.1/",
    # every spelling the resolver accepts for 127.0.0.1 is sent as 127.0.0.1
    "http://127.1:9/": "http://127.0.0.1:9/",
    "http://2130706433:9/": "http://127.0.0.1:9/",
    "http://0x7f.0.0.1:9/": "http://127.0.0.1:9/",
    "http://0177.0.0.1:9/": "http://127.0.0.1:9/",
    "https://HOOKS.Example.com/a": "https://hooks.example.com/a",
    "https://hooks.example.com:443/a": "https://hooks.example.com/a",
    "https://hooks\u3002example\u3002com/a": "https://hooks.example.com/a",
    "https://hooks.example.com": "https://hooks.example.com/",
    "http://10.0.0.5:8080/ok": "http://10.0.0.5:8080/ok",
    "http://10.0.0.5:8080/ok/": "http://10.0.0.5:8080/ok/",
    "http://10.0.0.5:8080/ok/x/../y": "http://10.0.0.5:8080/ok/y",
    "http://10.0.0.5:8080/ok/%7e%41": "http://10.0.0.5:8080/ok/~A",
    "http://10.0.0.5:8080/ok//x": "http://10.0.0.5:8080/ok/x",
    "http://10.0.0.5:8080/ok?task=1&b=%20": "http://10.0.0.5:8080/ok?task=1&b=%20",
    "http://[0:0::1]:8000/v1/chat": "http://[::1]:8000/v1/chat",
    "http://[::1]:8000/v1": "http://[::1]:8000/v1",
}


def webhook(url: str):
    return {"refinement": {"verifier": {"type": "webhook", "url": url}}}


@pytest.mark.parametrize("url", REFUSED)
def test_bypass_attempts_are_refused(url):
    with pytest.raises(CorrectionError) as err:
        parse_correction(webhook(url), context=CONTEXT)
    assert err.value.param == "correction.refinement.verifier.url"


@pytest.mark.parametrize(("url", "sent"), ALLOWED.items())
def test_allowed_urls_are_sent_normalised(url, sent):
    spec = parse_correction(webhook(url), context=CONTEXT)
    assert spec.refinement.verifier["url"] == sent


@pytest.mark.parametrize(
    "entry",
    [
        "ftp://example.com/",
        "http://user@example.com/",
        "http://user:pw@example.com/",
        "http://example.com/?q=1",
        "http://example.com/#top",
        "http://example.com/a/../b",
        "http://example.com/a/%2e%2e/b",
        "http://",
        "http:///path",
        "example.com/",
        "http://example.com:99999/",
        "http://example.com\\evil/",
        "http://exa mple.com/",
    ],
)
def test_bad_entries_are_config_errors_naming_the_key(entry):
    with pytest.raises(ConfigError) as err:
        entries = ["http://ok.example/", entry]
        load_config(overrides={"refinement.url_prefixes": entries}, environ={})
    assert "'refinement.url_prefixes.1'" in str(err.value)


def test_entries_are_stored_canonical():
    entries = ["HTTP://Hooks.Example.com:80/v1/", "http://127.0.0.1:"]
    config = load_config(overrides={"refinement.url_prefixes": entries}, environ={})
    assert config.refinement.url_prefixes == ["http://hooks.example.com/v1/", "http://127.0.0.1:*/"]


def test_canonical_urls_are_fixed_points():
    for sent in ALLOWED.values():
        assert str(parse_url(sent)) == sent
    for entry in PREFIXES:
        assert str(parse_prefix(str(parse_prefix(entry)))) == str(parse_prefix(entry))
