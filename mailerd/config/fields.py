"""The building blocks of every setting: the error type, ranges of numbers, secrets, parsers.

Pure: no file or environment is read here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import yarl


class ConfigError(Exception):
    """A configuration problem, with the file and the key it concerns in the message."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Range:
    """The values a numeric setting accepts (documented in config/mailerd.example.toml)."""

    low: float
    high: float
    low_open: bool = False  # ``low`` itself is refused
    below: str = ""  # the message for a value under the range, when not the generic one
    above: str = ""

    def problem(self, value: float) -> str | None:
        if value < self.low or (self.low_open and value == self.low):
            if self.below:
                return self.below
            if self.low_open:
                return "must be positive" if self.low == 0 else f"must be more than {_number(self.low)}"
            return f"must be at least {_number(self.low)}"
        if value > self.high:
            return self.above or f"must be at most {_number(self.high)}"
        return None


# The lowest rate a provider or a [pace] group may be given (recipients/s, 3.6 an hour): 1e-300
# was taken and froze the lane's workers on an endless wait.
MIN_RATE_PER_S = 0.001


def _within(default: _N, low: float, high: float, **kwargs: Any) -> _N:
    """A dataclass field whose value must lie in ``[low, high]`` (see :class:`_Range`)."""
    return dataclasses.field(default=default, metadata={"range": _Range(low, high, **kwargs)})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


_N = typing.TypeVar("_N", int, float)


@dataclasses.dataclass(frozen=True, slots=True)
class Secret:
    """A secret value; ``repr``/``str`` never show it. Call :meth:`reveal` where it is used."""

    value: str = dataclasses.field(repr=False)

    def reveal(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"72h"``, ``"7d"`` or a plain number of seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(f"expected a duration such as 72h or 7d, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8025"`` -> ``("127.0.0.1", 8025)``; ``"[::1]:80"`` works too."""
    match = re.fullmatch(r"\[?([^\]]*)\]?:(\d{1,5})", listen)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return match.group(1), int(match.group(2))


_HTTP_URL = re.compile(r"https?://[^\s/?#@]+(/\S*)?", flags=re.IGNORECASE)


def is_http_url(text: str) -> bool:
    """An ``http://`` or ``https://`` URL without credentials that aiohttp can request: the form
    alone took ``https://host:44x3`` (or port 99999, an unclosed ``[``), and every request to it
    then raised ``ValueError`` instead of failing as a request."""
    if not _HTTP_URL.fullmatch(text):
        return False
    try:
        return bool(yarl.URL(text).host)
    except ValueError:
        return False


def show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
