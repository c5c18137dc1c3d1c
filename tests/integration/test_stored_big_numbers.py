"""A lead whose attributes hold a number no double holds (``1e400``: the API and the import store
it exactly, as documented) is sent like any other. orjson refused it when the lead's window was
read back, and the exception took the whole daemon down, again at every restart."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from mailerd import campaigns
from mailerd.db import connect
from mailerd.emulator import sink
from tests.integration.helpers import (
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)


async def test_a_lead_holding_1e400_is_sent_and_the_daemon_goes_on(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 30)
    await conn.execute(
        """INSERT INTO leads (account_id, email, attributes) VALUES
           (1, 'big@example.com', '{"plan": "pro", "n": 1e400, "m": [2.5, 123456789012345678901234]}')"""
    )
    emulator = sink.Sink(record=tmp_path / "record.jsonl")
    port = await emulator.start()
    try:
        config = daemon_config(port)
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    assert info["sent"] == 11  # every third of 30 leads is on plan "pro", and big@
    assert "big@example.com" in {r["email"] for r in read_record(tmp_path / "record.jsonl")}


def test_a_stored_number_no_double_holds_reads_back_as_its_text() -> None:
    stored = b'\x01{"n": 1' + b"0" * 400 + b', "m": [2.5, 123456789012345678901234, -9223372036854775808]}'
    attributes = connect._jsonb_decode(stored)
    assert attributes == {"n": "1" + "0" * 400, "m": [2.5, "123456789012345678901234", -9223372036854775808]}
    assert isinstance(attributes["n"], connect.NumberText)
