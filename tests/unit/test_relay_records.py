"""A record kept as a dead letter comes back as it was read: same JSON, key and own time."""

from __future__ import annotations

import datetime as dt

from mailerd.relay import records

SENT = dt.datetime(2026, 11, 30, 23, 59, 59, 500_000, tzinfo=dt.UTC)
STORED = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def test_a_stored_email_keeps_its_value_key_and_sent_at() -> None:
    sent = records.email(
        tx=7,
        campaign_id=3,
        lead_id=11,
        status=1,
        provider_message_id="m-1",
        error=None,
        sent_at=SENT,
        account_id=2,
        provider="ses",
        address="a@example.org",
    )
    back = records.stored("email", sent.id, sent.value.decode(), STORED)
    assert (back.value, back.key, back.id) == (sent.value, sent.key, "email:3:11")
    # The reports database puts it in November's partition, not the month it was stored in.
    assert back.at == SENT


def test_a_stored_record_without_its_own_time_keeps_the_time_it_was_stored() -> None:
    back = records.stored("campaign", "campaign:1:2", '{"campaign_id": 1, "at": null}', STORED)
    assert back.at == STORED and back.key == b"1"
