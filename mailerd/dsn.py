"""Database connection strings: hide their passwords, and refuse what asyncpg would misread.

Pure: no I/O. :func:`redact` covers every form libpq accepts, so that a DSN shown by
``check-config`` or written to a log keeps what an operator needs (user, hosts, database,
options) and never a password:

- URLs (``postgresql://`` or ``postgres://``): the password of the user info (``u:pw@``), over
  one host or several (``h1:5432,h2:5433``), and the ``password`` and ``sslpassword``
  parameters of the query, whose names may be percent-encoded (``pass%77ord``);
- key=value strings (``host=db password=secret``): values bare or single-quoted, with libpq's
  backslash escapes (``password='it\\'s a secret'``), and a ``dbname`` that is itself a
  connection string (libpq expands it).

:func:`problem` says why a DSN cannot be used, without quoting it: asyncpg takes URLs only,
and a password holding a character that must be percent-encoded (``@ / ? #``) would otherwise
be read as part of a host name or port, and end up in a connection error.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

MASK: Final = "**********"
SCHEMES: Final = ("postgresql://", "postgres://")
# libpq's keywords whose value is a secret (``passfile`` and ``sslkey`` are paths, not secrets).
SECRET_KEYWORDS: Final = frozenset({"password", "sslpassword"})
_ENCODE_HINT: Final = "a user name or password holding @ / ? or # must be percent-encoded"


def redact(dsn: str) -> str:
    """``dsn`` with every password replaced by :data:`MASK`; the rest is kept as written."""
    scheme_end = _scheme_end(dsn)
    if scheme_end:
        return _redact_url(dsn, scheme_end)
    if "=" in dsn:
        return _redact_keywords(dsn)
    return dsn  # a bare database name


def problem(dsn: str) -> str | None:
    """Why asyncpg cannot use ``dsn`` as meant (None: it can); the text never quotes the DSN."""
    if not dsn.strip():
        return "must not be empty"
    scheme_end = _scheme_end(dsn)
    if not scheme_end:
        return "expected a postgresql:// URL (asyncpg takes no key=value connection strings)"
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "is not a valid URL"
    at = _userinfo_end(dsn, scheme_end)
    libpq_userinfo = dsn[scheme_end:at] if at >= 0 else ""
    asyncpg_userinfo, _, hostspec = parts.netloc.rpartition("@")
    if libpq_userinfo != asyncpg_userinfo or "@" in asyncpg_userinfo:
        return _ENCODE_HINT
    try:
        query = urllib.parse.parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError:
        return "malformed query string: every parameter must be key=value"
    ports = [_port(host) for host in hostspec.split(",") if host]
    ports += [p for value in query.get("port", []) for p in value.split(",")]
    if any(port and not (port.isascii() and port.isdigit()) for port in ports):
        return f"a port is not a number ({_ENCODE_HINT})"
    if any(port and (len(port.lstrip("0")) > 5 or int(port) > 65535) for port in ports):
        return "a port is beyond 65535"
    modes = query.get("sslmode", [])
    if any(mode not in _SSLMODES for mode in modes):
        return f"sslmode must be one of {', '.join(sorted(_SSLMODES))}"
    return None


_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _scheme_end(dsn: str) -> int:
    lower = dsn[:16].lower()
    for scheme in SCHEMES:
        if lower.startswith(scheme):
            return len(scheme)
    return 0


def _userinfo_end(dsn: str, start: int) -> int:
    """Where the user info ends (its ``@``), as libpq reads it: the first ``@`` before any ``/``."""
    for index in range(start, len(dsn)):
        if dsn[index] == "@":
            return index
        if dsn[index] == "/":
            return -1
    return -1


def _port(host: str) -> str:
    if host.startswith("["):  # [::1]:5432
        return host.partition("]")[2].removeprefix(":")
    return host.rpartition(":")[2] if ":" in host else ""


def _redact_url(dsn: str, scheme_end: int) -> str:
    at = _userinfo_end(dsn, scheme_end)
    if at < 0:
        # Not a form libpq accepts, but a password holding "/" is still a password: take
        # everything before the last "@" ahead of the query as the user info.
        at = dsn.rfind("@", scheme_end, _find(dsn, "?", scheme_end))
    head, rest = dsn[:scheme_end], dsn[scheme_end:]
    if at >= 0:
        user, colon, _ = dsn[scheme_end:at].partition(":")
        head += user + (":" + MASK if colon else "")
        rest = dsn[at:]
    path, question, query = rest.partition("?")
    if question:
        query = "&".join(_redact_parameter(field) for field in query.split("&"))
    return head + path + question + query


def _find(text: str, char: str, start: int) -> int:
    index = text.find(char, start)
    return len(text) if index < 0 else index


def _redact_parameter(field: str) -> str:
    key, equals, _ = field.partition("=")
    names = {urllib.parse.unquote(key), urllib.parse.unquote_plus(key)}
    if equals and any(name.strip().lower() in SECRET_KEYWORDS for name in names):
        return key + "=" + MASK
    return field


def _redact_keywords(dsn: str) -> str:
    """libpq's ``keyword = value`` syntax; past a syntax error everything is hidden."""
    out: list[str] = []
    index, length = 0, len(dsn)
    while index < length:
        start = index
        while index < length and dsn[index].isspace():
            index += 1
        name_start = index
        while index < length and dsn[index] != "=" and not dsn[index].isspace():
            index += 1
        name = dsn[name_start:index].lower()
        while index < length and dsn[index].isspace():
            index += 1
        if index >= length or dsn[index] != "=":
            if name:  # libpq: missing "=" after the keyword; whatever follows may be a secret
                out.append(dsn[start:index] + (MASK if index < length else ""))
                return "".join(out)
            out.append(dsn[start:index])
            break
        index += 1
        while index < length and dsn[index].isspace():
            index += 1
        value_start = index
        index, value, complete = _keyword_value(dsn, index)
        out.append(dsn[start:value_start])
        if not complete:
            out.append(MASK)
            return "".join(out)
        out.append(_shown_value(name, dsn[value_start:index], value))
    return "".join(out)


def _keyword_value(dsn: str, index: int) -> tuple[int, str, bool]:
    """One value from ``index``: (end index, unescaped value, whether it was complete)."""
    quoted = index < len(dsn) and dsn[index] == "'"
    if quoted:
        index += 1
    chars: list[str] = []
    while index < len(dsn):
        char = dsn[index]
        if quoted and char == "'":
            return index + 1, "".join(chars), True
        if not quoted and char.isspace():
            break
        if char == "\\":
            index += 1
            if index >= len(dsn):
                break
            char = dsn[index]
        chars.append(char)
        index += 1
    return index, "".join(chars), not quoted


def _shown_value(name: str, raw: str, value: str) -> str:
    if name in SECRET_KEYWORDS:
        return MASK
    if name == "dbname" and ("=" in value or _scheme_end(value)):
        # libpq expands a dbname that is a connection string itself.
        inner = redact(value)
        if inner == value:
            return raw
        return "'" + inner.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return raw
