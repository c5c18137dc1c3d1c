"""``email_log``: one row per email, append only, written with COPY, never updated.

One btree index ``(campaign_id, lead_id)`` serves every read here; the table is range-partitioned
by ``sent_at`` (see :mod:`mailerd.db.partitions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from mailerd import segments
from mailerd.models import Campaign, LogRow, LogStatus

COLUMNS = ("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error")
UNCERTAIN_ERROR = "in flight when its node stopped"
FLUSH_ID_KEY = "writer_flushes_pkey"  # a flush id inserted twice: the first insert committed


async def copy_rows(conn: asyncpg.Connection, rows: Sequence[LogRow]) -> None:
    """Append ``rows`` with COPY (the only way the hot path writes the log)."""
    await conn.copy_records_to_table("email_log", records=rows, columns=COLUMNS)


async def highest_logged(conn: asyncpg.Connection, campaign_id: int, after: int, upto: int) -> int:
    """The highest lead id in ``(after, upto]`` that already has a row (0 when none)."""
    found = await conn.fetchval(
        "SELECT max(lead_id) FROM email_log WHERE campaign_id = $1 AND lead_id > $2 AND lead_id <= $3",
        campaign_id,
        after,
        upto,
    )
    return int(found or 0)


async def log_uncertain(conn: asyncpg.Connection, campaign: Campaign, after: int, upto: int) -> int:
    """Log the campaign's matching leads of ``(after, upto]`` that have no row ``unknown``.
    Returns how many. A lead whose address is suppressed now is ``unknown`` too: the node that
    died may have sent it before the suppression came (a bounce of another campaign), so
    ``suppressed`` (not sent) could be false (found by bench/soak.py)."""
    condition, params = segments.compile(campaign.segment, first_param=7, alias="l")
    inserted = await conn.fetch(
        f"""INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id, error)
            SELECT now(), $4, l.id, $5::smallint, NULL, $6
            FROM leads l
            WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND ({condition})
              AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $4 AND e.lead_id = l.id)
            RETURNING 1""",
        campaign.account_id,
        after,
        upto,
        campaign.id,
        int(LogStatus.UNKNOWN),
        UNCERTAIN_ERROR,
        *params,
    )
    return len(inserted)


async def flush_recorded(conn: asyncpg.Connection, flush_id: object) -> bool:
    """Whether a writer flush with this id committed (looked up before writing it again)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM writer_flushes WHERE id = $1)", flush_id))


async def record_flush(conn: asyncpg.Connection, flush_id: object) -> None:
    """Inside the flush's transaction: its id commits exactly when its rows do."""
    await conn.execute("INSERT INTO writer_flushes (id) VALUES ($1)", flush_id)
