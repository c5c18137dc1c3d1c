"""Provider text that Postgres cannot store is cleaned before it reaches the writer."""

from __future__ import annotations

import datetime as dt

from mailerd.models import Event, EventKind
from mailerd.providers.webhooks import scrub


def test_nul_characters_are_replaced_and_clean_events_kept_as_they_are() -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    dirty = Event("sendgrid", EventKind.HARD_BOUNCE, at, "a@example.com", "id\x00:a", reason="5.1.1\x00x")
    clean = Event("sendgrid", EventKind.DELIVERED, at, "b@example.com", "id2:b")
    scrubbed = scrub([dirty, clean])
    assert scrubbed[0].reason == "5.1.1\ufffdx"
    assert scrubbed[0].receipt == "id\ufffd:a"
    assert scrubbed[1] is clean
