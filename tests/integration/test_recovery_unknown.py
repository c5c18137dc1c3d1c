"""Crash recovery logs every reserved lead without a row ``unknown``, also one whose address was
suppressed since: the node that died may have emailed it before the suppression came (a bounce
of another campaign), so ``suppressed`` (not sent) could be false. Found by bench/soak.py."""

from __future__ import annotations

import asyncpg

from mailerd import campaigns
from mailerd.db import campaigns as campaigns_db
from mailerd.db import email_log
from mailerd.models import LogStatus
from mailerd.scheduler import campaign_from_row
from tests.integration.helpers import add_leads, daemon_config, new_campaign


async def test_a_lead_suppressed_after_the_crash_is_logged_unknown(conn: asyncpg.Connection) -> None:
    await add_leads(conn, 1, 6)  # user0..user5; "pro": user0 and user3
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    row = await campaigns_db.get(conn, campaign_id)
    assert row is not None
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason) VALUES (1, 'user3@example.com', 'bounce')"
    )
    upto = await conn.fetchval("SELECT max(id) FROM leads")
    assert await email_log.log_uncertain(conn, campaign_from_row(row), 0, upto) == 2
    logged = await conn.fetch("SELECT status, error FROM email_log WHERE campaign_id = $1", campaign_id)
    assert [(r["status"], r["error"]) for r in logged] == [(LogStatus.UNKNOWN, email_log.UNCERTAIN_ERROR)] * 2
