"""The URL allow-list for verifiers that call out (``webhook``, ``judge`` with a ``url``).

Pure parsing, no network. The operator lists entries (``[refinement] url_prefixes``), each
parsed at config load by :func:`parse_prefix`; a client's URL is parsed by :func:`parse_url`
into one canonical form, matched against the entries component by component, and that
canonical form (not the client's string) is what the verifier then requests, so no second
parser (httpx, the resolver, the remote server) can read it differently.

Canonical form:

- scheme ``http`` or ``https``, lower case;
- no userinfo, no fragment; no whitespace, control characters, backslashes or non-ASCII
  characters outside the host;
- host: an IPv4 address in dotted-quad form (every spelling the C resolver accepts —
  ``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1`` — is read as the address it
  means), an IPv6 address in compressed form (no zone), or a DNS name lower-cased and
  IDNA-encoded (letters, digits, ``-``, ``_``, dots; no trailing dot; its last label not
  numeric, so that no name can be read as an address);
- port: explicit, or the scheme's default (omitted when it is the default);
- path: percent-escapes of unreserved characters decoded, the others upper-cased; runs of
  ``/`` collapsed to one; ``.`` and ``..`` segments resolved. Percent-encoded ``/`` and
  ``\\`` (``%2F``, ``%5C``), encoded control characters, and ``.``/``..`` with ``;``
  parameters are refused: servers disagree on them;
- query kept as sent (same character rules).

A URL is allowed when scheme, host and port equal an entry's and its path equals the entry's
path or continues it at a ``/`` (``/ok`` allows ``/ok`` and ``/ok/x``, not ``/okay``). Hosts
match as written (after the canonicalisation above), not as resolved: ``localhost`` and
``127.0.0.1`` are different entries, and where a listed name resolves is the operator's DNS
(see docs/security.md on rebinding).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationInfo

#: Validation context key: the :class:`URLPrefix` entries (or their strings) a deployment
#: allows verifications to be sent to; absent: any http(s) URL (library use).
URL_PREFIXES_CONTEXT = "verifier_url_prefixes"

DEFAULT_PORTS = {"http": 80, "https": 443}
#: An entry's port that means any port.
ANY_PORT = "*"

# RFC 3986 appendix B, anchored; the authority is checked further below.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Characters a path or query may hold literally (RFC 3986 pchar plus '/' and '?').
_LITERAL = _UNRESERVED | frozenset("!$&'()*+,;=:@/?")
_HEX = frozenset("0123456789ABCDEFabcdef")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class URLError(ValueError):
    """Not a URL this server will send a request to; the message says why."""


@dataclass(frozen=True)
class URL:
    """A parsed URL in canonical form; ``str()`` is the URL requests go to."""

    scheme: str
    host: str
    port: int
    path: str
    query: str | None = None

    def __str__(self) -> str:
        return (
            _origin(self.scheme, self.host, self.port)
            + self.path
            + ("" if self.query is None else "?" + self.query)
        )


@dataclass(frozen=True)
class URLPrefix:
    """An allow-list entry: scheme, host, port (None: any) and a path prefix."""

    scheme: str
    host: str
    port: int | None
    path: str

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.scheme}://{_bracket(self.host)}:{ANY_PORT}{self.path}"
        return _origin(self.scheme, self.host, self.port) + self.path

    def admits(self, url: URL) -> bool:
        if (url.scheme, url.host) != (self.scheme, self.host):
            return False
        if self.port is not None and url.port != self.port:
            return False
        base = self.path.rstrip("/")
        return url.path == base or url.path.startswith(base + "/")


def parse_url(text: str) -> URL:
    """``text`` in canonical form; :class:`URLError` when it is not an http(s) URL this
    module can read unambiguously."""
    scheme, host, port, rest = _split(text)
    if port is None:
        raise URLError("a URL needs a port number after ':' (or no ':' for the default)")
    path, _, query = rest.partition("?")
    has_query = "?" in rest
    _check_literal(query, "query")
    return URL(scheme, host, port, _normalise_path(path), query if has_query else None)


def parse_prefix(text: str) -> URLPrefix:
    """An allow-list entry: ``scheme://host[:port][/path]``; the port may be ``*`` (or empty,
    as in ``http://127.0.0.1:``) for any port. No userinfo, query, fragment or dot segments."""
    scheme, host, port, rest = _split(text)
    if "?" in rest:
        raise URLError("an allowed URL prefix takes no query")
    segments = rest.split("/")
    if any(s in (".", "..") or s.lower() in ("%2e", "%2e%2e", ".%2e", "%2e.") for s in segments):
        raise URLError("an allowed URL prefix takes no '.' or '..' path segments")
    return URLPrefix(scheme, host, port, _normalise_path(rest))


def is_allowed(url: URL, prefixes: Iterable[URLPrefix]) -> bool:
    return any(prefix.admits(url) for prefix in prefixes)


def check_url(url: str | None, info: ValidationInfo) -> str | None:
    """Pydantic validator for a verifier's ``url``: the canonical URL, when the deployment's
    allow-list (the validation context's :data:`URL_PREFIXES_CONTEXT`) admits it."""
    if url is None:
        return None
    try:
        parsed = parse_url(url)
    except URLError as exc:
        raise ValueError(f"not a URL this server sends requests to: {exc}") from None
    entries = (info.context or {}).get(URL_PREFIXES_CONTEXT)
    if entries is not None:
        prefixes = [e if isinstance(e, URLPrefix) else parse_prefix(e) for e in entries]
        if not is_allowed(parsed, prefixes):
            allowed = ", ".join(map(str, prefixes)) or "none (set [refinement] url_prefixes)"
            raise ValueError(
                f"this server does not send verifications to {parsed}; allowed: {allowed}"
            )
    return str(parsed)


def _split(text: str) -> tuple[str, str, int | None, str]:
    """(scheme, canonical host, port or None for '*'/empty, the rest) of a URL or prefix."""
    if not isinstance(text, str):
        raise URLError("a URL is a string")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in text):
        raise URLError("whitespace, control characters and backslashes are not allowed")
    if "#" in text:
        raise URLError("a URL here takes no fragment ('#')")
    match = _URL.fullmatch(text)
    if match is None:
        raise URLError("expected http://host[:port]/path or https://...")
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise URLError("only http:// and https:// URLs are allowed")
    authority = match["authority"]
    if "@" in authority or "%40" in authority.lower():
        raise URLError("a URL here takes no user name or password ('user@')")
    host, port = _host_port(authority, scheme)
    rest = match["rest"]
    if any(ord(c) > 0x7E for c in rest):
        raise URLError("the path and query must be ASCII (percent-encode other characters)")
    return scheme, host, port, rest


def _host_port(authority: str, scheme: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise URLError("an IPv6 address needs its closing ']'")
        raw_host, after = authority[1:end], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise URLError("unexpected characters after the IPv6 address")
        raw_port = after[1:] if after else None
        if "%" in raw_host:
            raise URLError("IPv6 zone identifiers are not allowed")
        try:
            host = ipaddress.IPv6Address(raw_host).compressed
        except ValueError:
            raise URLError(f"{raw_host!r} is not an IPv6 address") from None
    else:
        raw_host, colon, raw_port = authority.partition(":")
        raw_port = raw_port if colon else None
        host = _canonical_host(raw_host)
    return host, _port(raw_port, scheme)


def _port(raw: str | None, scheme: str) -> int | None:
    if raw is None:
        return DEFAULT_PORTS[scheme]
    if raw in ("", ANY_PORT):
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5 or not 0 < int(raw) < 65536:
        raise URLError(f"{raw!r} is not a port number (1-65535)")
    return int(raw)


def _canonical_host(raw: str) -> str:
    if not raw:
        raise URLError("a URL needs a host")
    if "%" in raw or "[" in raw or "]" in raw:
        raise URLError("percent-escapes and brackets are not allowed in a host name")
    try:
        host = raw.encode("idna").decode("ascii").lower() if not raw.isascii() else raw.lower()
    except UnicodeError:
        raise URLError(f"{raw!r} is not a valid host name") from None
    if host.endswith("."):
        raise URLError("a host name here takes no trailing dot")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # The C resolver reads this as an IPv4 address; so does this module.
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            raise URLError(f"{raw!r} is not a valid IPv4 address") from None
    if len(host) > 253 or not all(len(label) <= 63 and _LABEL.fullmatch(label) for label in labels):
        raise URLError(f"{raw!r} is not a valid host name")
    return host


def _normalise_path(path: str) -> str:
    _check_literal(path, "path")
    segments: list[str] = []
    parts = [_decode_unreserved(s) for s in path.split("/")]
    for i, segment in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        if segment.split(";", 1)[0] in (".", "..") and ";" in segment:
            raise URLError("'.' and '..' path segments with ';' parameters are not allowed")
        if segment == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif segment == "." or (segment == "" and not last):
            if last:
                segments.append("")
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def _decode_unreserved(segment: str) -> str:
    """Percent-escapes of unreserved characters decoded, the others upper-cased; escapes
    that servers may read as separators or controls are refused."""
    out = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        code = segment[i + 1 : i + 3]
        if len(code) < 2 or not set(code) <= _HEX:
            raise URLError("'%' must start a percent-escape of two hex digits")
        char = chr(int(code, 16))
        if char in "/\\" or ord(char) < 0x20 or ord(char) == 0x7F:
            raise URLError(f"the escape %{code.upper()} is not allowed in a path")
        out.append(char if char in _UNRESERVED else "%" + code.upper())
        i += 3
    return "".join(out)


def _check_literal(text: str, part: str) -> None:
    bad = sorted({c for c in text if c not in _LITERAL and c != "%"})
    if bad:
        raise URLError(f"the {part} holds characters that must be percent-encoded: {''.join(bad)}")
    for i, c in enumerate(text):
        if c == "%" and not set(text[i + 1 : i + 3]) <= _HEX | {""}:
            raise URLError("'%' must start a percent-escape of two hex digits")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _origin(scheme: str, host: str, port: int) -> str:
    netloc = _bracket(host) if port == DEFAULT_PORTS[scheme] else f"{_bracket(host)}:{port}"
    return f"{scheme}://{netloc}"
