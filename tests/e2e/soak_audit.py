"""What the soak checks once its cluster (tests/e2e/soak_cluster.py) has settled; shared by
``bench/soak.py`` and tests/e2e/test_soak.py.

- **The record against the log**: no lead emailed twice (the emulator's record), every matched
  lead exactly one ``email_log`` row, every emailed lead logged ``sent`` or ``unknown`` and every
  ``sent`` row emailed.
- **``unknown`` attributed to the crash that left it.** Every recovery logs
  ``shard_recovered_uncertain`` with the claim it accounts for (``recovered_epoch``,
  ``previous_owner``) and its range ``(checkpoint, reserved_upto]``; the rows it inserted are the
  ``unknown`` rows with error ``in flight when its node stopped`` in that range (successive
  recoveries of a shard cover disjoint ranges). The claim's own ``shard_claimed`` line gives
  when it was made; the fault that ended it is the first, after that, of a SIGKILL of its node
  and a Postgres restart. So each row is counted once, for one fault, and the totals must add
  up to the rows in the log. Checked per claim against the documented bound: at most
  ``2 x reservation_step`` leads that were not on the suppression list at the recovery.
- **The stream**: every ``email_log`` row and every ``email_events`` row on Kafka at least once.
- **The reports database** equal to the log: per campaign and status (emails) and per campaign
  and type (events) the same counts, and no row missing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from mailerd.db import connect as db_connect
from mailerd.db.email_log import UNCERTAIN_ERROR
from mailerd.models import LogStatus
from tests.e2e import procs
from tests.e2e.soak_cluster import Claim, Faults, Kill, StreamWatcher

# --- unknown rows, each attributed to the fault that left it ------------------------------------


@dataclasses.dataclass(slots=True)
class Recovery:
    """One ``shard_recovered_uncertain``: the claim it accounts for and its range."""

    claim: Claim
    owner: str | None
    after: int
    upto: int
    logged_unknown: int
    at: float
    rows: int = 0  # unknown rows of its range in the log
    suppressed: int = 0  # of those, leads suppressed by the time of the recovery
    cause: str = "none"  # "kill:<i>", "pg:<j>", or "none"


def _wall(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def read_logs(logs: list[Path]) -> tuple[dict[Claim, float], list[Recovery]]:
    """Every node's claims (claim -> when) and recoveries, from their JSON log lines."""
    claimed: dict[Claim, float] = {}
    recoveries: list[Recovery] = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            if not line.startswith(b"{") or b"shard_" not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                event = entry.get("event")
                if event == "shard_claimed":
                    claim = (entry["campaign_id"], entry["shard_no"], entry["epoch"])
                    claimed[claim] = _wall(entry["timestamp"])
                elif event == "shard_recovered_uncertain":
                    claim = (entry["campaign_id"], entry["shard_no"], entry["recovered_epoch"])
                    recoveries.append(
                        Recovery(
                            claim=claim,
                            owner=entry.get("previous_owner"),
                            after=entry["checkpoint"],
                            upto=entry["reserved_upto"],
                            logged_unknown=entry["unknown"],
                            at=_wall(entry["timestamp"]),
                        )
                    )
    return claimed, recoveries


def latest_per_claim(recoveries: list[Recovery]) -> list[Recovery]:
    """One recovery per claim: the last logged. The line is written inside the claim's
    transaction, before its commit: a claim that failed after it (its node killed, Postgres
    restarting) rolled the rows and the epoch back, so the next claim recovers the same claim
    and logs it again. Only the last of those committed (after it the shard's epoch moves on)."""
    latest: dict[Claim, Recovery] = {}
    for recovery in sorted(recoveries, key=lambda r: r.at):
        latest[recovery.claim] = recovery
    return list(latest.values())


async def count_recovered(conn: asyncpg.Connection, recoveries: list[Recovery]) -> None:
    """Each recovery's rows in the log, and how many of them were suppressed by then."""
    if not recoveries:
        return
    rows = await conn.fetch(
        """SELECT r.i, count(*) AS rows,
                  count(*) FILTER (WHERE EXISTS (
                      SELECT 1 FROM suppressions sp
                      WHERE sp.account_id = l.account_id AND sp.email = lower(l.email)
                        AND sp.at <= e.sent_at)) AS suppressed
           FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[]) AS r(i, campaign_id, after, upto)
           JOIN email_log e ON e.campaign_id = r.campaign_id AND e.lead_id > r.after
                           AND e.lead_id <= r.upto AND e.status = $5 AND e.error = $6
           JOIN leads l ON l.id = e.lead_id
           GROUP BY r.i""",
        list(range(len(recoveries))),
        [r.claim[0] for r in recoveries],
        [r.after for r in recoveries],
        [r.upto for r in recoveries],
        int(LogStatus.UNKNOWN),
        UNCERTAIN_ERROR,
    )
    for row in rows:
        recoveries[row["i"]].rows = row["rows"]
        recoveries[row["i"]].suppressed = row["suppressed"]


def attribute(recoveries: list[Recovery], claimed: dict[Claim, float], faults: Faults) -> int:
    """Set each recovery's cause: the first fault after its claim was made that ended it (a
    SIGKILL of its node, a Postgres restart). A claim whose line is missing (its node died
    between the claim's commit and the log line) goes to the last such fault before the
    recovery. Returns how many claims had no line."""
    without_line = 0
    for recovery in recoveries:
        kills = [(k.at, f"kill:{i}") for i, k in enumerate(faults.kills) if k.node == recovery.owner]
        restarts = [(at, f"pg:{j}") for j, at in enumerate(faults.pg_restarts)]
        candidates = sorted(kills + restarts)
        made = claimed.get(recovery.claim)
        if made is None:
            without_line += 1
            before = [c for c in candidates if c[0] <= recovery.at]
            recovery.cause = before[-1][1] if before else "none"
            continue
        after = [c for c in candidates if c[0] >= made]
        recovery.cause = after[0][1] if after else "none"
    return without_line


@dataclasses.dataclass(slots=True)
class UnknownAccount:
    """The ``unknown`` rows, by cause, against the bounds."""

    step: int
    max_shards: int
    recoveries: list[Recovery]
    kills: list[Kill]
    without_line: int
    uncertain_rows: int  # rows with the recovery's error, in the whole log
    uncertain_calls: int  # "uncertain: <reason>": a provider call with no answer (not a crash)
    rolled_back: int = 0  # recovery lines of claims that did not commit (logged again later)

    @property
    def claim_bound(self) -> int:
        return 2 * self.step

    def per_kill(self) -> list[int]:
        totals = [0] * len(self.kills)
        for r in self.recoveries:
            if r.cause.startswith("kill:"):
                totals[int(r.cause[5:])] += r.rows
        return totals

    def claims_per_kill(self) -> list[int]:
        counts = [0] * len(self.kills)
        for r in self.recoveries:
            if r.cause.startswith("kill:"):
                counts[int(r.cause[5:])] += 1
        return counts

    def kill_bounds(self) -> list[int]:
        """Per kill: 2 x step per claim it ended, plus its suppressed leads."""
        bounds = [0] * len(self.kills)
        for r in self.recoveries:
            if r.cause.startswith("kill:"):
                bounds[int(r.cause[5:])] += self.claim_bound + r.suppressed
        return bounds

    def per_restart(self) -> dict[str, int]:
        totals: collections.Counter[str] = collections.Counter()
        for r in self.recoveries:
            if r.cause.startswith("pg:"):
                totals[r.cause] += r.rows
        return dict(totals)

    def by_cause(self, prefix: str) -> int:
        return sum(r.rows for r in self.recoveries if r.cause.startswith(prefix))

    def naive(self) -> dict[str, int]:
        """The measure the soak used to take right after each kill, against the formula it used
        (concurrency x batch + shards x step) and against 2 x step per shard; and how many of
        the kills over it had counted a claim that another fault had ended."""
        cause_of = {r.claim: r.cause for r in self.recoveries}
        batch = self.step  # concurrency x batch_size: the default step
        over_old = over_doc = stale = 0
        for i, kill in enumerate(self.kills):
            shards = min(len(kill.naive_claims), self.max_shards)
            if kill.naive > batch + shards * self.step:
                over_old += 1
                if any(cause_of.get(c) not in (None, f"kill:{i}") for c in kill.naive_claims):
                    stale += 1
            if kill.naive > shards * self.claim_bound:
                over_doc += 1
        return {
            "naive_max_unknown_per_kill": max((k.naive for k in self.kills), default=0),
            "naive_kills_over_old_formula": over_old,
            "naive_over_old_formula_counting_another_faults_claims": stale,
            "naive_kills_over_2x_step_per_shard": over_doc,
            "naive_sum": sum(k.naive for k in self.kills),
        }

    def figures(self) -> dict[str, Any]:
        per_kill = self.per_kill()
        over_claims = [r for r in self.recoveries if r.rows - r.suppressed > self.claim_bound]
        return {
            "unknown_in_flight_rows": self.uncertain_rows,
            "unknown_uncertain_calls": self.uncertain_calls,
            "unknown_attributed": sum(r.rows for r in self.recoveries),
            "unknown_by_sigkill": self.by_cause("kill:"),
            "unknown_by_postgres_restart": self.by_cause("pg:"),
            "unknown_without_fault": self.by_cause("none"),
            "recoveries": len(self.recoveries),
            "recoveries_log_vs_rows_differ": sum(1 for r in self.recoveries if r.rows != r.logged_unknown),
            "recoveries_rolled_back": self.rolled_back,
            "claims_without_claim_line": self.without_line,
            "max_unknown_per_claim": max((r.rows for r in self.recoveries), default=0),
            "max_unsuppressed_unknown_per_claim": max(
                (r.rows - r.suppressed for r in self.recoveries), default=0
            ),
            "claim_bound": self.claim_bound,
            "claims_over_bound": len(over_claims),
            "max_unknown_per_kill": max(per_kill, default=0),
            "max_claims_per_kill": max(self.claims_per_kill(), default=0),
            "kills_over_bound": sum(1 for u, b in zip(per_kill, self.kill_bounds(), strict=True) if u > b),
            "max_unknown_per_postgres_restart": max(self.per_restart().values(), default=0),
            **self.naive(),
        }

    def checks(self) -> dict[str, bool]:
        f = self.figures()
        return {
            "every unknown row attributed to one fault": f["unknown_attributed"] == self.uncertain_rows
            and f["unknown_without_fault"] == 0,
            "unknown per claim within 2 x reservation_step (+ suppressed)": f["claims_over_bound"] == 0,
            "unknown per SIGKILL within 2 x step per shard it held": f["kills_over_bound"] == 0
            and f["max_claims_per_kill"] <= self.max_shards,
        }


async def account_unknown(
    conn: asyncpg.Connection, logs: list[Path], faults: Faults, options: procs.DaemonOptions
) -> UnknownAccount:
    claimed, logged = read_logs(logs)
    recoveries = latest_per_claim(logged)
    await count_recovered(conn, recoveries)
    without_line = attribute(recoveries, claimed, faults)
    counts = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE error = $2) AS in_flight,
                  count(*) FILTER (WHERE error LIKE 'uncertain:%') AS calls
           FROM email_log WHERE status = $1""",
        int(LogStatus.UNKNOWN),
        UNCERTAIN_ERROR,
    )
    return UnknownAccount(
        step=options.step,
        max_shards=options.max_shards_per_node,
        recoveries=recoveries,
        kills=faults.kills,
        without_line=without_line,
        rolled_back=len(logged) - len(recoveries),
        uncertain_rows=counts["in_flight"],
        uncertain_calls=counts["calls"],
    )


# --- the record against the log, the stream ----------------------------------------------------


def audit_record(
    record: Path, matched: set[int], created: list[int], logged: list[asyncpg.Record]
) -> dict[str, Any]:
    emailed: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    with record.open("rb") as lines:
        for line in lines:
            if line.strip():
                entry = orjson.loads(line)
                emailed[int(entry["campaign_id"])][int(entry["lead_id"])] += 1
    rows: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    statuses: dict[int, dict[int, int]] = collections.defaultdict(dict)
    for row in logged:
        rows[row["campaign_id"]][row["lead_id"]] += 1
        statuses[row["campaign_id"]][row["lead_id"]] = row["status"]
    totals: collections.Counter[str] = collections.Counter()
    lost: collections.Counter[str] = collections.Counter()  # what each loss was
    for campaign_id in created:
        result = procs.Audit(matched, emailed[campaign_id], rows[campaign_id], statuses[campaign_id])
        totals.update(result.summary())
        for lead, status in statuses[campaign_id].items():
            if lead in emailed[campaign_id] and status not in (LogStatus.SENT, LogStatus.UNKNOWN):
                lost[f"emailed, logged {LogStatus(status).name.lower()}"] += 1
            if status == LogStatus.SENT and lead not in emailed[campaign_id]:
                lost["logged sent, not emailed"] += 1
    return {
        "campaigns": len(created),
        "emails_logged": len(logged),
        "emails_sent_by_emulator": sum(sum(c.values()) for c in emailed.values()),
        "duplicates": totals["duplicates"],
        "multi_rows": totals["multi_rows"],
        "missing_rows": totals["missing_rows"],
        "losses": totals["losses"],
        "losses_by_kind": dict(lost),
        "unknown": sum(1 for row in logged if row["status"] == LogStatus.UNKNOWN),
    }


def audit_stream(
    watcher: StreamWatcher, logged: list[asyncpg.Record], events: list[asyncpg.Record]
) -> dict[str, Any]:
    return {
        "stream_email_records": len(watcher.emails),
        "stream_deliveries": watcher.deliveries,
        "rows_missing_on_stream": sum(
            1 for r in logged if (r["campaign_id"] << 32 | r["lead_id"]) not in watcher.emails
        ),
        "events_missing_on_stream": sum(
            1 for e in events if f"event:{e['provider']}:{e['provider_event_id']}" not in watcher.events
        ),
    }


# --- the reports database -------------------------------------------------------------------------


async def wait_reports(reports_dsn: str, emails: int, events: int, within: float) -> None:
    """Until the reports database holds as many emails and events as the log (the relay has
    caught up); TimeoutError past ``within``, left to the comparison to show."""
    conn = await db_connect.connect(reports_dsn)
    try:

        async def caught_up() -> bool:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM report_emails) AS emails,"
                " (SELECT count(*) FROM report_events) AS events"
            )
            return bool(row["emails"] >= emails and row["events"] >= events)

        with contextlib.suppress(TimeoutError):
            await procs.wait_until(caught_up, within, interval=0.5)
    finally:
        await conn.close()


async def audit_reports(
    reports_dsn: str, logged: list[asyncpg.Record], events: list[asyncpg.Record]
) -> dict[str, Any]:
    """The reports database against the log: counts per campaign and status (emails) and per
    campaign and type (events), rows missing and rows it has that the log has not."""
    conn = await db_connect.connect(reports_dsn)
    try:
        report_emails = await conn.fetch("SELECT campaign_id, lead_id, status FROM report_emails")
        report_events = await conn.fetch(
            "SELECT provider, provider_event_id, type, campaign_id FROM report_events"
        )
    finally:
        await conn.close()
    log_counts = collections.Counter((r["campaign_id"], LogStatus(r["status"]).name.lower()) for r in logged)
    report_counts = collections.Counter((r["campaign_id"], r["status"]) for r in report_emails)
    log_event_counts = collections.Counter((e["campaign_id"], e["kind"]) for e in events)
    report_event_counts = collections.Counter((e["campaign_id"], e["type"]) for e in report_events)
    in_reports = {r["campaign_id"] << 32 | r["lead_id"] for r in report_emails}
    in_log = {r["campaign_id"] << 32 | r["lead_id"] for r in logged}
    events_in_reports = {(e["provider"], e["provider_event_id"]) for e in report_events}
    events_in_log = {(e["provider"], e["provider_event_id"]) for e in events}
    return {
        "reports_emails": len(report_emails),
        "reports_events": len(report_events),
        "reports_emails_missing": len(in_log - in_reports),
        "reports_emails_extra": len(in_reports - in_log),
        "reports_events_missing": len(events_in_log - events_in_reports),
        "reports_events_extra": len(events_in_reports - events_in_log),
        "reports_email_counts_differ": sorted(
            f"{c}/{s}: log {log_counts[(c, s)]}, reports {report_counts[(c, s)]}"
            for c, s in set(log_counts) | set(report_counts)
            if log_counts[(c, s)] != report_counts[(c, s)]
        ),
        "reports_event_counts_differ": sorted(
            f"{c}/{t}: log {log_event_counts[(c, t)]}, reports {report_event_counts[(c, t)]}"
            for c, t in set(log_event_counts) | set(report_event_counts)
            if log_event_counts[(c, t)] != report_event_counts[(c, t)]
        ),
        "reports_counts_per_campaign_and_status": {
            f"{c}/{s}": n for (c, s), n in sorted(report_counts.items())
        },
    }


def checks(figures: dict[str, Any], unknown: UnknownAccount) -> dict[str, bool]:
    """The checks common to every soak (``figures``: what the audits above returned)."""
    result = {
        "no lead emailed twice": figures["duplicates"] == 0,
        "every lead exactly one row": figures["multi_rows"] == 0 and figures["missing_rows"] == 0,
        "no loss": figures["losses"] == 0,
        **unknown.checks(),
        "every webhook answered 2xx stored": figures["events_stored"] >= figures["webhooks_posted"] > 0,
        "reports database equal to the log": not figures["reports_emails_missing"]
        and not figures["reports_emails_extra"]
        and not figures["reports_events_missing"]
        and not figures["reports_events_extra"]
        and not figures["reports_email_counts_differ"]
        and not figures["reports_event_counts_differ"],
    }
    if "rows_missing_on_stream" in figures:
        result["every row on the stream"] = figures["rows_missing_on_stream"] == 0
        result["every event on the stream"] = figures["events_missing_on_stream"] == 0
    return result


async def audit_cluster(
    cluster: Any, logged: list[asyncpg.Record], events: list[asyncpg.Record], within: float
) -> tuple[dict[str, Any], dict[str, bool]]:
    """Every audit above on a settled :class:`tests.e2e.soak_cluster.Cluster` (its nodes still
    running, so the relay can catch up): (figures, checks)."""
    assert cluster.poster is not None and cluster.balancer is not None
    figures = audit_record(cluster.record, cluster.matched, cluster.created, logged)
    unknown = await account_unknown(
        cluster.conn, [d.log_path for d in cluster.daemons], cluster.faults, cluster.setup.options
    )
    figures.update(unknown.figures())
    figures.update(
        {
            "events_stored": len(events),
            "webhooks_posted": cluster.poster.counters.posted,
            "webhooks_failed": cluster.poster.counters.failed,
            "webhooks_dropped": cluster.poster.counters.dropped,
            "balancer_retries": cluster.balancer.retries,
        }
    )
    if cluster.watcher is not None:
        figures.update(audit_stream(cluster.watcher, logged, events))
    await wait_reports(cluster.reports_dsn, len(logged), len(events), within)
    figures.update(await audit_reports(cluster.reports_dsn, logged, events))
    return figures, checks(figures, unknown)
