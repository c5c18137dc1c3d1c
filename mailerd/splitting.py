"""Splitting a running campaign into shards: by lead id, and for a campaign with a send window,
by time zone too (each zone's shards are claimed only while its window is open, see
:mod:`mailerd.windows`). Done once per campaign, by whichever node gets there first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import asyncpg
import structlog

from mailerd import segments, windows
from mailerd.db import campaigns as campaigns_db
from mailerd.db import leads as leads_db
from mailerd.db import shards as shards_db
from mailerd.db import stats as stats_db
from mailerd.models import MIN_CAMPAIGN_RATE, Campaign, CampaignStatus

log = structlog.get_logger(__name__)


# How many times a windowed campaign whose shards are all done gets shards for the leads still
# unsent (a lead whose zone changed). Each check scans the account's leads once; a lead that
# moves again while its new zone waits needs a second; leads newly matching the segment as fast
# as the rounds end (an attribute the segment reads that users change all the time) would
# otherwise keep the campaign running, and scanning, for as long as their windows stay open.
UNSENT_ROUNDS = 3


def campaign_from_row(row: asyncpg.Record) -> Campaign:
    """A campaigns row as the pipeline's :class:`Campaign` (segment parsed and validated)."""
    return Campaign(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        status=CampaignStatus(row["status"]),
        # the text, not the jsonb orjson decoded: a number no double holds keeps its value
        segment=segments.parse(row["segment_text"]),
        from_address=row["from_address"],
        subject=row["subject"],
        html_body=row["html_body"],
        text_body=row["text_body"],
        provider=row["provider"],
        # a rate stored before MIN_CAMPAIGN_RATE existed (5e-324: an endless wait) as the floor
        rate_per_s=None if row["rate_per_s"] is None else max(row["rate_per_s"], MIN_CAMPAIGN_RATE),
        resend_uncertain=row["resend_uncertain"],
        status_reason=row["status_reason"],
        generation=row["status_generation"],
        reply_to=row["reply_to"],
        headers=tuple(sorted(row["headers"].items())),
        provider_template=row["provider_template"],
        send_window=None if row["send_window"] is None else windows.parse(row["send_window"]),
    )


def with_condition(campaign: Campaign, condition: dict[str, Any]) -> Campaign:
    """The campaign whose segment also requires ``condition`` (a segment node; tested first:
    a zone's string comparison is cheaper than most segments, and most rows fail it)."""
    extra = segments.parse(condition)
    segment = segments.Segment(
        root=segments.All((extra.root, campaign.segment.root)),
        nodes=campaign.segment.nodes + extra.nodes + 1,
        depth=max(campaign.segment.depth, extra.depth) + 1,
    )
    return dataclasses.replace(campaign, segment=segment)


async def split_campaign(
    conn: asyncpg.Connection, campaign_id: int, shard_size: int, *, now: dt.datetime | None = None
) -> int:
    """Cut a running campaign into shards of about ``shard_size`` leads; count its matches.

    A campaign with a send window is cut per time zone too (``now``: the clock that decides
    which zones wait). Idempotent across nodes: the campaign row is locked and shards are made
    only once, and only while it is running (the caller read it running before the lock: another
    node may have finished it since, an operator paused or cancelled it). Returns the number of
    shards (0 when it is no longer running).
    """
    async with conn.transaction():
        row = await campaigns_db.get(conn, campaign_id, for_update=True)
        if row is None or row["status"] != CampaignStatus.RUNNING:
            return 0
        existing = await shards_db.count(conn, campaign_id)
        if existing:
            return existing
        campaign = campaign_from_row(row)
        edges = await shards_db.boundaries(conn, campaign.account_id, shard_size)
        matched = await leads_db.count_segment(conn, campaign.account_id, campaign.segment)
        await stats_db.set_matched(conn, campaign_id, matched)
        if not edges:
            # Cannot be refused: the row is locked and running (a node that lost the race to
            # another reads it finished above, once that one committed).
            await campaigns_db.change_status(conn, campaign_id, "finish", "no leads", cause="scheduler")
            log.info("campaign_finished_empty", campaign_id=campaign_id)
            return 0
        if campaign.send_window is not None:
            count = await _split_by_zone(
                conn, campaign, shard_size, edges[-1], now or dt.datetime.now(dt.UTC)
            )
        else:
            await shards_db.create(conn, campaign_id, edges)
            count = len(edges)
        log.info("campaign_split", campaign_id=campaign_id, shards=count, matched=matched)
        return count


async def _split_by_zone(
    conn: asyncpg.Connection, campaign: Campaign, shard_size: int, last: int, now: dt.datetime
) -> int:
    """Shards per time zone (each zone's leads cut every ``shard_size``; zones whose clocks agree
    share shards), the default zone always among them (it takes the leads of no known zone,
    including zones first seen after now). Zones whose window is closed wait for its opening."""
    window = campaign.send_window
    assert window is not None
    default = window.default_timezone
    found = await shards_db.zone_boundaries(
        conn, campaign.account_id, campaign.segment, window.attribute_path, shard_size
    )
    resolved = windows.resolve_zones(window, found)
    groups = windows.group_zones(resolved.values(), default, now)
    cuts: dict[str, set[int]] = {default: set()}
    names: dict[str, set[str]] = {default: set()}
    for value, zone in resolved.items():
        group = groups[zone]
        cuts.setdefault(group, set()).update(found[value])
        names.setdefault(group, set()).add(zone)
    edges = {zone: [*sorted(cut for cut in ids if cut < last), last] for zone, ids in cuts.items()}
    not_before = {
        zone: None if windows.is_open(window, zone, now) else windows.next_open(window, zone, now)
        for zone in edges
    }
    log.info("campaign_split_by_zone", campaign_id=campaign.id, zones=len(resolved), shard_zones=len(edges))
    return await shards_db.create_zoned(conn, campaign.id, edges, names, not_before)


async def finish_windowed(
    conn: asyncpg.Connection, campaign_id: int, shard_size: int, *, now: dt.datetime
) -> bool:
    """Finish a windowed campaign whose shards are all done, unless some leads it matches are
    still unsent: a zone shard reads a lead's zone when it reaches it, so a lead that moved from
    a zone still waiting to one whose shards were done was passed by both. Those leads get new
    shards of the zone they are in now (with its names, so every shard's condition stays as it
    was), claimed in its window; the check runs again when those are done, at most
    :data:`UNSENT_ROUNDS` times. Returns whether the campaign finished. Idempotent across nodes:
    the campaign row is locked."""
    async with conn.transaction():
        row = await campaigns_db.get(conn, campaign_id, for_update=True)
        if row is None or row["status"] not in (CampaignStatus.RUNNING, CampaignStatus.PAUSED):
            return False
        progress = await shards_db.progress(conn, campaign_id)
        if not progress.done:
            return False  # another node gave it shards meanwhile
        campaign = campaign_from_row(row)
        window = campaign.send_window
        assert window is not None
        unsent = await shards_db.unsent_zones(
            conn,
            campaign.account_id,
            campaign_id,
            campaign.segment,
            window.attribute_path,
            progress.last_lead_id,
            shard_size,
        )
        if not unsent or progress.unsent_round >= UNSENT_ROUNDS:
            if unsent:
                log.warning(
                    "campaign_finished_with_unsent_leads",
                    campaign_id=campaign_id,
                    leads=sum(found.count for found in unsent.values()),
                    rounds=progress.unsent_round,
                )
            await campaigns_db.change_status(conn, campaign_id, "finish", cause="scheduler")
            return True
        names = await shards_db.zones(conn, campaign_id)
        # The group each value's leads are sent by, as windows.zone_condition decides it: a name
        # a group lists goes to it, any other value (none, invalid, a new zone) to the default.
        group_of = {name: group for group, members in names.items() for name in members}
        default = window.default_timezone
        starts: dict[str, int] = {}
        ends: dict[str, int] = {}
        cuts: dict[str, set[int]] = {}
        for value, found in unsent.items():
            group = default if value is None else group_of.get(value, default)
            starts[group] = min(starts.get(group, found.first), found.first)
            ends[group] = max(ends.get(group, found.last), found.last)
            cuts.setdefault(group, set()).update(found.cuts)
        edges = {
            group: [*sorted(cut for cut in cuts[group] if cut < ends[group]), ends[group]] for group in ends
        }
        not_before = {
            group: None if windows.is_open(window, group, now) else windows.next_open(window, group, now)
            for group in edges
        }
        count = await shards_db.create_zoned(
            conn,
            campaign_id,
            edges,
            names,
            not_before,
            starts={group: first - 1 for group, first in starts.items()},
            first_shard_no=progress.last_shard_no + 1,
            unsent_round=progress.unsent_round + 1,
        )
        log.info(
            "campaign_unsent_leads_found",
            campaign_id=campaign_id,
            leads=sum(found.count for found in unsent.values()),
            zones=sorted(edges),
            shards=count,
            round=progress.unsent_round + 1,
        )
        return False
