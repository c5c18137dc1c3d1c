"""Prometheus metrics. Names carry the ``mailerd_`` prefix and units; labels are bounded sets
(provider names come from the configuration, statuses from fixed enums)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["Counter", "Gauge", "Histogram"]

EMAILS = Counter(
    "mailerd_emails_total",
    "Emails by final outcome as logged (sent, failed, unknown, suppressed).",
    ["provider", "status"],
)
RETRIES = Counter(
    "mailerd_provider_retries_total",
    "Recipients retried, by reason (throttled, error, entry).",
    ["provider", "reason"],
)
SMTP_REJECTIONS = Counter(
    "mailerd_smtp_rejections_total",
    "Recipients an SMTP server finally refused (5xx, or 4xx after the last attempt), by bounce class.",
    ["provider", "bounce_class"],
)
PROVIDER_CALLS = Histogram(
    "mailerd_provider_call_seconds",
    "Duration of one provider call (one batch).",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCHES_IN_FLIGHT = Gauge("mailerd_batches_in_flight", "Batches being sent now.", ["provider"])
QUEUE_DEPTH = Gauge("mailerd_queue_depth_batches", "Batches waiting for a sender.", ["provider"])
RATE_LIMIT_WAIT = Counter(
    "mailerd_ratelimit_wait_seconds_total",
    "Time senders and shards waited on the rate limiters.",
    ["provider"],
)
FLUSH_SECONDS = Histogram(
    "mailerd_writer_flush_seconds",
    "Duration of one writer flush (COPY + stats + checkpoints, one transaction).",
    # Up to the default command timeout: the flush of a full buffer after an outage is slow.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FLUSH_ROWS = Histogram(
    "mailerd_writer_flush_rows",
    "Rows written by one writer flush.",
    # Past the default max_buffer_rows: after an outage one flush takes the whole buffer.
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000),
)
GUARD_PAUSES = Counter(
    "mailerd_guard_pauses_total",
    "Campaigns paused by a deliverability guard, by scope (campaign, provider) and signal "
    "(bounce, complaint, blocked).",
    ["scope", "signal"],
)
PROVIDER_HELD = Gauge(
    "mailerd_provider_held",
    "1 while the provider guard holds the provider account (its campaigns paused until an "
    "operator releases it), else 0.",
    ["provider"],
)
PROVIDER_RATE = Gauge(
    "mailerd_provider_rate_ratio",
    "A provider account's rolling 24 h rate since its last release: hard bounces, complaints "
    "or blocks per email sent (signal: bounce, complaint, blocked).",
    ["provider", "signal"],
)
PROVIDER_QUOTA_REMAINING = Gauge(
    "mailerd_provider_quota_remaining",
    "What a provider account's daily quota and warm-up cap leave to reserve, as this node's "
    "last reservation saw it (only for providers with daily_quota, warmup or an account quota).",
    ["provider"],
)
PROVIDER_QUOTA_WAITING = Gauge(
    "mailerd_provider_quota_waiting",
    "1 while this node's senders of the provider wait for its daily quota or warm-up cap to free, else 0.",
    ["provider"],
)
PROVIDER_QUOTA_WAIT = Counter(
    "mailerd_provider_quota_wait_seconds_total",
    "Seconds the sender workers of a provider waited for its daily quota or warm-up cap.",
    ["provider"],
)
PROVIDER_SENT_24H = Gauge(
    "mailerd_provider_sent_24h",
    "Emails a provider account sent over the rolling 24 hours since its last release, across every node.",
    ["provider"],
)
FLUSH_FAILURES = Counter("mailerd_writer_flush_failures_total", "Writer flushes that failed and will retry.")
WRITER_BUFFER_ROWS = Gauge("mailerd_writer_buffer_rows", "Rows waiting in the writer's buffer.")
SHARDS_CLAIMED = Gauge("mailerd_shards_claimed", "Campaign shards this node holds.")
SHARDS_LOST = Counter("mailerd_shards_lost_total", "Shards fenced out or whose claim connection dropped.")
CAMPAIGN_ACTIVATION_FAILURES = Counter(
    "mailerd_campaign_activation_failures_total",
    "Splits of a running campaign into shards that failed on an error nothing foresaw (see the log).",
)
WEBHOOK_EVENTS = Counter(
    "mailerd_webhook_events_total", "Provider events received by webhook, by kind.", ["provider", "kind"]
)
WEBHOOK_REJECTED = Counter(
    "mailerd_webhook_rejected_total", "Webhook requests refused, by HTTP status.", ["provider", "status"]
)
DEAD_LETTERS = Counter(
    "mailerd_writer_dead_letters_total",
    "Rows or events the writer could not store and kept in dead_letters (kind emails or events; "
    "emails_unrecorded / events_unrecorded: not even the dead letter could be stored, see the log).",
    ["kind"],
)
LOOP_LAG = Histogram(
    "mailerd_event_loop_lag_seconds",
    "How late the event loop ran a timer, sampled every 0.1 s: the longest a callback waited.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LOOP_LAG_MAX = Gauge(
    "mailerd_event_loop_lag_max_seconds", "The largest event-loop lag sampled over the last 10 seconds."
)

# --- the relay (mailerd/relay/): exported by the node that holds the relay lock ---
RELAY_LEADER = Gauge("mailerd_relay_leader", "1 on the node running the relay (one per cluster), else 0.")
RELAY_RECORDS = Counter(
    "mailerd_relay_records_total",
    "Records acknowledged by a destination, by kind (email, event, campaign, erasure).",
    ["destination", "kind"],
)
RELAY_FAILURES = Counter(
    "mailerd_relay_failures_total",
    "Failed deliveries: unavailable (retried with backoff) or refused (records dead-lettered).",
    ["destination", "reason"],
)
RELAY_DEAD_LETTERS = Counter(
    "mailerd_relay_dead_letters_total", "Records a destination refused for good.", ["destination"]
)
RELAY_LAG_RECORDS = Gauge(
    "mailerd_relay_lag_records", "Committed records not yet delivered (sampled; capped).", ["destination"]
)
RELAY_LAG_SECONDS = Gauge(
    "mailerd_relay_lag_seconds",
    "Age of the newest moment up to which everything committed was delivered.",
    ["destination"],
)
RELAY_POSITION_AGE = Gauge(
    "mailerd_relay_position_age_seconds",
    "Seconds since the destination's position was last committed.",
    ["destination"],
)
RELAY_BATCH_SECONDS = Histogram(
    "mailerd_relay_batch_seconds",
    "One batch: read, deliver (retries included) and commit.",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RELAY_STAGE_SECONDS = Counter(
    "mailerd_relay_stage_seconds_total",
    "Time one destination's loop spent per stage: read (waiting for the next batch's read, the part "
    "not hidden behind the delivery before it), deliver (retries included), commit (the position).",
    ["destination", "stage"],
)
RELAY_BRIN_RANGES = Counter(
    "mailerd_relay_brin_ranges_summarized_total",
    "Block ranges of the outbox's BRIN indexes on tx that the relay summarised (so its reads skip "
    "them), by table.",
    ["table"],
)
PARTITIONS_KEPT_FOR_RELAY = Gauge(
    "mailerd_partitions_kept_for_relay",
    "Partitions past retention kept because a relay destination has not passed their rows.",
    ["table"],
)
PARTITIONS_KEPT_FOR_CAMPAIGNS = Gauge(
    "mailerd_partitions_kept_for_campaigns",
    "Partitions past retention kept because they hold rows of a campaign not finished.",
    ["table"],
)
PARTITION_MAINTENANCE_DEFERRED = Counter(
    "mailerd_partition_maintenance_deferred_total",
    "Partition creations or drops left for a later round: a lock was not granted in time.",
    ["table"],
)

# --- node state and the cluster's campaigns: for dashboards and alerts ---
READY = Gauge("mailerd_ready", "1 when /readyz answers 200 (started, not draining, the writer writes).")
DATABASE_UP = Gauge(
    "mailerd_database_up", "1 when this node's last periodic query of Postgres succeeded, 0 when it failed."
)
CAMPAIGNS = Gauge(
    "mailerd_campaigns",
    "Campaigns by status (scheduled, running, paused), sampled from the database by every node.",
    ["status"],
)
CAMPAIGN_LEADS_REMAINING = Gauge(
    "mailerd_campaign_leads_remaining",
    "Leads matched but not yet logged (each campaign's never below 0), summed over the campaigns of a "
    "status (running, paused).",
    ["status"],
)
CAMPAIGN_LEADS_WAITING_FOR_WINDOW = Gauge(
    "mailerd_campaign_leads_waiting_for_window",
    "Leads left of the running campaigns whose every pending shard waits for its send window to open.",
)
CAMPAIGN_LEADS_LOGGED = Gauge(
    "mailerd_campaign_leads_logged",
    "Leads logged (any outcome), summed over the campaigns of a status (running, paused).",
    ["status"],
)

# The state of a sending node, which only `mailerd run` knows: `mailerd relay run` leaves them out
# of its /metrics (exported at their default 0, they said "not ready" and "database down").
DAEMON_ONLY: Final = frozenset({"mailerd_ready", "mailerd_database_up"})


def start_at_zero(providers: Iterable[str], webhooks: Iterable[str]) -> None:
    """Create the node's counter series that alerts read with ``increase()`` at 0, for every
    label value known at start. A series that first appears with a value hides that first
    increase (Prometheus has no sample before it): the first dead letters, crash recovery or
    guard pause of a node since its start alerted nobody."""
    for provider in providers:
        for status in ("sent", "failed", "unknown", "suppressed"):
            EMAILS.labels(provider, status)
    for kind in ("emails", "events", "emails_unrecorded", "events_unrecorded"):
        DEAD_LETTERS.labels(kind)
    for scope in ("campaign", "provider"):
        for signal in ("bounce", "complaint", "blocked"):
            GUARD_PAUSES.labels(scope, signal)
    for provider in webhooks:
        for code in ("400", "401", "403", "503"):
            WEBHOOK_REJECTED.labels(provider, code)
