"""The operations files shipped inside the package (``mailerd files``): the example
configuration, the systemd units, the example environment file, the Grafana dashboard and the
Prometheus alert rules. In the source tree they live in config/, systemd/ and deploy/;
mailerd/share/ holds symbolic links to them, which the wheel and the sdist carry as files."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

PACKAGE = "mailerd"
FOLDER = "share"


def _folder() -> Traversable:
    return resources.files(PACKAGE).joinpath(FOLDER)


def names() -> list[str]:
    """The shipped files, sorted."""
    return sorted(entry.name for entry in _folder().iterdir() if entry.is_file())


def read(name: str) -> bytes:
    """One shipped file's bytes; ``KeyError`` naming the known files for any other name."""
    if name not in names():
        raise KeyError(f"no shipped file {name!r}; there are: {', '.join(names())}")
    return _folder().joinpath(name).read_bytes()
