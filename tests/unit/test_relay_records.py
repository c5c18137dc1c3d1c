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


def test_each_erasure_moves_after_its_own_leads_records_only() -> None:
    """Erasures of leads 1 and 2 (account 7), records of several leads after them: each erasure
    goes right after its leads' last record, the others keep their order, and so do the
    erasures; an erasure of no lead (by address) stays where it is."""

    def email(lead: int, tx: int) -> records.Record:
        return records.Record("email", records.lead_key(7, lead).encode(), tx, SENT, b"{}")

    def erased(number: int, tx: int, *leads: int) -> records.Record:
        row = {
            "id": number,
            "account_id": 7,
            "tx": tx,
            "at": SENT,
            "email_hashes": [],
            "lead_ids": list(leads),
        }
        return records.erasure(row)

    batch = [erased(1, 10, 1), erased(2, 11, 2), email(3, 12), email(1, 13), email(4, 14), email(2, 15)]
    batch += [email(1, 16), email(5, 17), erased(3, 18), email(6, 19)]
    assert [(r.kind, r.tx) for r in records.erasures_last(batch)] == [
        ("email", 12), ("email", 13), ("email", 14), ("email", 15), ("email", 16), ("erasure", 10),
        ("erasure", 11), ("email", 17), ("erasure", 18), ("email", 19),
    ]  # fmt: skip
