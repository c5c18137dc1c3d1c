"""Deliverability guards: pause a campaign before its provider pauses the account.

The writer calls :meth:`CampaignGuard.check` after each flush that committed, with the campaigns
the flush counted something for (emails or events). The check reads ``campaign_stats`` (counters
that the same flushes keep: primary-key look-ups, never the log) and pauses, through
:func:`mailerd.db.campaigns.change_status` with cause ``guard`` and the generation it read, each
running campaign that has sent at least ``min_sample`` emails since its guard baseline (sent, or
rejected by an SMTP server: a rejection is a bounce of an email logged failed, so it is in the
sample too) and whose hard-bounce, complaint or blocked rate passes its maximum. So a campaign
pauses in the flush that commits the event crossing a threshold (at most ``EVENT_FLUSH_S`` after
the webhook arrived), on whichever node received it; every node stops it on the NOTIFY.

An operator's resume after a guard pause moves the baseline to the counters of that moment
(:func:`mailerd.db.stats.reset_guard_baseline`): the guard judges the emails sent from then on.
The bounces and complaints of earlier emails that arrive after it are added to the baseline as
they are recorded (:func:`mailerd.events.record`), so they count against no email sent since.
A flush is wholly before a resume or wholly after it: the resume locks the counters before it
takes its baseline, and a flush locks those it judges before it reads the baselines
(docs/guards.md "Resuming" has the edges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import asyncpg
import structlog

from mailerd import metrics
from mailerd.config import GuardsConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import stats as stats_db

log = structlog.get_logger(__name__)

SIGNALS = ("bounce", "complaint", "blocked")


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """What a guard judges: emails sent, and rejected by an SMTP server (logged failed), and of
    them hard bounces (no block), complaints, blocks. A rejection is a bounce of an email that
    is not ``sent``: both belong to the sample, or a rate could pass 100 %."""

    sent: int
    hard_bounced: int
    complained: int
    blocked: int
    rejected: int = 0

    @property
    def sample(self) -> int:
        """The emails the rates are over: every one a receiver answered for."""
        return self.sent + self.rejected


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """A guard's thresholds (from ``[guards]`` or a provider's ``guard_*`` keys)."""

    min_sample: int
    max_bounce_rate: float
    max_complaint_rate: float
    max_blocked_rate: float

    @classmethod
    def of(cls, config: GuardsConfig) -> Limits:
        return cls(
            config.min_sample, config.max_bounce_rate, config.max_complaint_rate, config.max_blocked_rate
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """Why a guard pauses: the signal that passed its threshold, and the reason to record."""

    signal: str
    reason: str


def judge(
    counts: Counts, limits: Limits, *, scope: str = "campaign", prefix: str = "", window: str = ""
) -> Verdict | None:
    """The first rate above its maximum, once the sample (sent and rejected) is large enough;
    None: all is well. ``prefix`` names the keys (``provider_``), ``window`` the sample's
    (`` in 24 h``)."""
    total = counts.sample
    if total < limits.min_sample or total <= 0:
        return None
    if counts.rejected:
        sample = f"of {total} emails{window}: {counts.sent} sent, {counts.rejected} rejected in SMTP"
    else:
        sample = f"of {total} sent{window}"
    checks = (
        ("bounce", "hard-bounce rate", counts.hard_bounced, "max_bounce_rate", limits.max_bounce_rate),
        ("complaint", "complaint rate", counts.complained, "max_complaint_rate", limits.max_complaint_rate),
        ("blocked", "blocked rate", counts.blocked, "max_blocked_rate", limits.max_blocked_rate),
    )
    for signal, label, count, key, threshold in checks:
        rate = count / total
        if rate > threshold:
            reason = (
                f"guard: {scope} {label} {percent_above(rate, threshold)} ({count} {sample}) "
                f"exceeds {prefix}{key} {percent(threshold, digits=10)}"
            )
            return Verdict(signal, reason)
    return None


def percent(share: float, digits: int = 3) -> str:
    """``0.0008`` -> ``0.08%``: three significant digits (or ``digits``), never rounded to zero."""
    return f"{share * 100:.{digits}g}%"


def percent_above(rate: float, threshold: float) -> str:
    """``rate`` (above ``threshold``) with as many digits as it takes to read above the
    threshold as shown: 4001 of 100001 is ``4.001%``, not ``4%`` ("4% exceeds 4%")."""
    shown_threshold = float(percent(threshold, digits=10)[:-1])
    for digits in range(3, 17):
        shown = percent(rate, digits)
        if float(shown[:-1]) > shown_threshold:
            return shown
    return percent(rate, 17)


class CampaignGuard:
    """Judges the campaigns a flush touched; pauses those past a threshold."""

    def __init__(self, config: GuardsConfig) -> None:
        self.config = config
        self.limits = Limits.of(config)

    async def check(self, conn: asyncpg.Connection, campaign_ids: Collection[int]) -> list[int]:
        """Pause each campaign of ``campaign_ids`` past a threshold. Returns the ids paused."""
        if not self.config.enabled or not campaign_ids:
            return []
        paused = []
        for row in await stats_db.guard_counts(conn, sorted(campaign_ids), self.limits.min_sample):
            counts = Counts(
                row["sent"], row["hard_bounced"], row["complained"], row["blocked"], row["rejected"]
            )
            verdict = judge(counts, self.limits)
            if verdict is None:
                continue
            try:
                await campaigns_db.change_status(
                    conn,
                    row["id"],
                    "pause",
                    verdict.reason,
                    cause=campaigns_db.GUARD_CAUSE,
                    generation=row["generation"],
                )
            except campaigns_db.TransitionError as exc:
                log.info("guard_pause_skipped", campaign_id=row["id"], reason=str(exc))
                continue
            metrics.GUARD_PAUSES.labels("campaign", verdict.signal).inc()
            log.warning("campaign_paused_by_guard", campaign_id=row["id"], reason=verdict.reason)
            paused.append(row["id"])
        return paused
