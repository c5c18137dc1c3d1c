"""What every emulated provider webhook is made from, and what its signer offers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from mailerd.models import EventKind


class SentEmail(NamedTuple):
    """An email the emulator accepted, as its webhooks describe it (every signer's input)."""

    email: str
    campaign_id: int
    lead_id: int
    message_id: str
    occurred_at: dt.datetime


class EmulatorSigner(Protocol):
    """The emulator side of a provider's webhook (one module per provider in this package)."""

    def request(
        self, kind: EventKind, sent: SentEmail, *, block: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of one signed webhook POST; ``block``: a bounce that is the receiver's
        reputation or authentication block, in the provider's own words (``kind`` is ignored)."""

    def daemon_settings(self, work_dir: Path) -> dict[str, Any]:
        """The ``[webhooks.<provider>]`` values a daemon needs to verify these requests."""
