"""What one writer flush holds: the entries submitted (a batch's rows with its claim, or a
webhook's events), each claim's plan (the batches it logs and the checkpoint they allow), the
rows and counters gathered from them, and what is kept of an entry that cannot be stored.

Pure bookkeeping for :mod:`mailerd.writer`, which owns the buffer and the transaction.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses

from mailerd import deadletter, metrics
from mailerd.models import Event, LogRow, LogStatus
from mailerd.stages import ShardHandle, StatusCounts

ShardKey = tuple[int, int, int]  # campaign, shard, epoch: one claim


@dataclasses.dataclass(slots=True)
class Entry:
    """One submission: a batch's rows (with its shard) or one webhook's events."""

    shard: ShardHandle | None
    seq: int
    rows: list[LogRow]
    retried: int
    complete: bool
    done: asyncio.Future[None]
    events: list[Event] | None = None
    counts: StatusCounts | None = None  # sent, failed, unknown, suppressed

    @property
    def size(self) -> int:
        return len(self.rows) + (len(self.events) if self.events else 0)

    @property
    def webhook(self) -> bool:
        """A webhook's events (a batch's entry may carry events too: its SMTP rejections)."""
        return bool(self.events) and not self.rows


@dataclasses.dataclass(slots=True)
class Plan:
    """What one flush does for one claim: the batches it logs and the checkpoint they allow."""

    key: ShardKey
    shard: ShardHandle
    seqs: set[int]
    complete: set[int]
    checkpoint: int
    done: bool


def plan_of(key: ShardKey, entries: list[Entry]) -> Plan:
    shard = entries[0].shard
    assert shard is not None
    complete = {e.seq for e in entries if e.complete}
    checkpoint, done = shard.checkpoint_if_logged(complete)
    return Plan(key, shard, {e.seq for e in entries}, complete, checkpoint, done)


def gather_rows(
    entries: list[Entry],
) -> tuple[list[LogRow], dict[int, list[int]], list[tuple[Entry, StatusCounts]]]:
    """All rows of a flush, the counters per campaign (sent, failed, unknown, suppressed,
    retried, rejected), and each entry's status counts (for the metrics once committed).
    ``rejected``: the failed rows whose SMTP rejection the entry carries as an event (one per
    recipient), so the guards' sample counts every email a receiver answered for."""
    stats: dict[int, list[int]] = {}
    records: list[LogRow] = []
    per_entry: list[tuple[Entry, StatusCounts]] = []
    for entry in entries:
        if not entry.rows:
            continue
        records.extend(entry.rows)
        entry_counts = entry.counts or count_statuses(entry.rows)
        per_entry.append((entry, entry_counts))
        # Every row of an entry belongs to one campaign (one batch, or one window).
        counts = stats.get(entry.rows[0][1])
        if counts is None:
            counts = stats[entry.rows[0][1]] = [0, 0, 0, 0, 0, 0]
        for index, count in enumerate(entry_counts):
            counts[index] += count
        counts[4] += entry.retried
        counts[5] += len(entry.events or ())
    return records, stats, per_entry


def count_emails(per_entry: list[tuple[Entry, StatusCounts]]) -> None:
    per_status: collections.Counter[tuple[str, int]] = collections.Counter()
    for entry, entry_counts in per_entry:
        if entry.shard is not None:
            for index, count in enumerate(entry_counts):
                per_status[(entry.shard.provider_name, index + 1)] += count
    for (name, status), count in per_status.items():
        if count:
            status_counters(name)[status].inc(count)


def shard_key(shard: ShardHandle) -> ShardKey:
    return (shard.campaign_id, shard.shard_no, shard.epoch)


def entry_letter(entry: Entry, error: BaseException) -> deadletter.Letter:
    """What is kept of an entry that cannot be stored."""
    shard = entry.shard
    return deadletter.Letter(
        kind="events" if entry.webhook else "emails",
        campaign_id=shard.campaign_id if shard is not None else None,
        shard_no=shard.shard_no if shard is not None else None,
        seq=entry.seq if shard is not None else None,
        items=[*(entry.events or ())] if entry.webhook else [*entry.rows, *(entry.events or ())],
        error=error,
    )


_COUNTERS: dict[str, dict[int, metrics.Counter]] = {}


def status_counters(provider: str) -> dict[int, metrics.Counter]:
    """Label children cached per provider: ``labels()`` is too slow for once per row."""
    counters = _COUNTERS.get(provider)
    if counters is None:
        counters = _COUNTERS[provider] = {
            int(status): metrics.EMAILS.labels(provider, status.name.lower()) for status in LogStatus
        }
    return counters


def count_statuses(rows: list[LogRow]) -> StatusCounts:
    """(sent, failed, unknown, suppressed) of rows whose submitter did not count them."""
    counts = [0, 0, 0, 0]
    for row in rows:
        counts[row[3] - 1] += 1
    return counts[0], counts[1], counts[2], counts[3]
