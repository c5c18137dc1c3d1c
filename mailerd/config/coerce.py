"""One TOML table into one section's dataclass: every value checked against the field's type.

Environment overrides arrive as :class:`EnvText` and are read as TOML unless the key takes text;
secrets are one line of text, from the environment or a ``<key>_file``.
"""

from __future__ import annotations

import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mailerd.config.fields import ConfigError, Secret, show


class EnvText(str):
    """A raw environment value; :func:`coerce` reads it as TOML unless the key takes text.
    ``variable`` is the environment variable it came from (an error names it: the file does
    not hold the value)."""

    __slots__ = ("variable",)
    variable: str

    def __new__(cls, value: str, variable: str = "") -> EnvText:
        text = super().__new__(cls, value)
        text.variable = variable
        return text


def env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or a whole number of more than 4300 digits
        return text


def is_secret_type(tp: Any) -> bool:
    args = typing.get_args(tp)
    if tp is Secret:
        return True
    return any(a is Secret for a in args) or any(is_secret_type(a) for a in args if a is not type(None))


def build_section(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        try:
            target, coerced = _build_key(section, hints, key, value)
        except ConfigError as exc:
            # The file does not hold the key (an unknown one included): name the variable.
            if isinstance(value, EnvText) and value.variable:
                raise ConfigError(f"{exc} (from the environment: {value.variable})") from None
            raise
        kwargs[target] = coerced
    return cls(**kwargs)


def named(section: str, values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A ``[TABLES.NAME]`` table's values with its ``name``, the table's own: a ``name`` key was
    silently replaced by it (``[providers.a] name = "b"`` made provider ``a``)."""
    if "name" in values:
        value = values["name"]
        where = f" (from the environment: {value.variable})" if isinstance(value, EnvText) else ""
        raise ConfigError(f"[{section}] name: unknown key (the name is the table's: [{section}]){where}")
    return {**values, "name": name}


def _build_key(section: str, hints: Mapping[str, Any], key: str, value: Any) -> tuple[str, Any]:
    """The field ``key`` sets (``api_key`` for ``api_key_file``) and its coerced value."""
    target = key
    if key.endswith("_file") and key[: -len("_file")] in hints:
        target = key[: -len("_file")]
        if not is_secret_type(hints[target]):
            raise ConfigError(f"[{section}] {key}: only secrets can be read from a file")
        value = _read_secret_file(section, key, value)
    if target not in hints:
        if (section, target) == ("database", "reports_dsn"):
            raise ConfigError(
                "[database] reports_dsn: replaced by [reports] dsn (a reports database the relay "
                "loads, not a replica of this one)"
            )
        raise ConfigError(f"[{section}] {key}: unknown key")
    return target, coerce(section, target, hints[target], value)


def _read_secret_file(section: str, key: str, path: Any) -> str:
    """The secret a ``<key>_file`` holds: one line of UTF-8 text, surrounding whitespace dropped."""
    if not isinstance(path, str):
        raise ConfigError(f"[{section}] {key}: expected a file path, got {show(path)}")
    try:
        value = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"[{section}] {key}: {path} not UTF-8 text (write the secret as text, "
            "e.g. `openssl rand -hex 32`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"[{section}] {key}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"[{section}] {key}: {path} is empty")
    if _CONTROL.search(value):
        raise ConfigError(f"[{section}] {key}: {path} holds control characters (one line of text expected)")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def coerce(section: str, key: str, tp: Any, value: Any) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"[{section}] {key}: expected {expected}, got {show(value)}")

    if isinstance(value, EnvText):
        # "12345" is a fine API key and "042" a fine node name: text keys take the raw text
        # unless it is written as a TOML string ("\"a b\"") or, for a list, a TOML array
        # (["a:9092", "b:9092"] was split at its comma into '["a:9092"' and '"b:9092"]');
        # other keys take it as TOML.
        parsed = env_value(value)
        as_toml = isinstance(parsed, str) or (isinstance(parsed, list) and _is_list(tp))
        value = str(value) if _takes_text(tp) and not as_toml else parsed
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return None if value is None else coerce(section, key, inner[0], value)
    if tp is Secret:
        return _secret(section, key, value, fail)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise fail("a list")
        return tuple(coerce(section, key, args[0], v) for v in value)
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    return _scalar(tp, value, fail)


def _scalar(tp: Any, value: Any, fail: typing.Callable[[str], ConfigError]) -> Any:
    accepts, expected = _SCALARS[tp]
    if not accepts(value):
        raise fail(expected)
    if tp is not float:
        return value
    try:
        number = float(value)
    except OverflowError:  # a whole number past a float's range (1e400 written out): a traceback
        raise fail("a finite number") from None
    if not math.isfinite(number):
        raise fail("a finite number")
    return number


# What each scalar type accepts from TOML (a bool is not a number here, though Python says so).
_SCALARS: dict[Any, tuple[typing.Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _secret(section: str, key: str, value: Any, fail: typing.Callable[[str], ConfigError]) -> Secret:
    """A secret is one line of text; an empty one would crash (or weaken) the daemon later."""
    if not isinstance(value, str):
        raise fail("a string")
    if not value.strip():
        raise ConfigError(f"[{section}] {key}: must not be empty")
    if _CONTROL.search(value):
        raise ConfigError(f"[{section}] {key}: holds control characters (one line of text expected)")
    if value.strip().upper() == PLACEHOLDER:
        # mailerd.env.example's: an admin token, unsubscribe or erasure key everybody knows.
        raise ConfigError(
            f"[{section}] {key}: {PLACEHOLDER} is the example environment file's placeholder; "
            "set a secret of your own (e.g. openssl rand -hex 32)"
        )
    return Secret(value)


PLACEHOLDER = "CHANGE-ME"


def _is_list(tp: Any) -> bool:
    """Whether the key takes a list (``tuple[...]``, optional or not)."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return any(_is_list(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is tuple


def _takes_text(tp: Any) -> bool:
    if tp in (str, Secret) or typing.get_origin(tp) is Literal:
        return True
    if typing.get_origin(tp) in (types.UnionType, typing.Union, tuple):
        return any(_takes_text(a) for a in typing.get_args(tp) if a not in (type(None), Ellipsis))
    return False
