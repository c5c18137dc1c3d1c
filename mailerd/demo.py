"""``mailerd demo``: the whole pipeline on a laptop, with nothing installed but Python.

An embedded Postgres, generated leads with realistic attributes, a few suppressed addresses, the
loopback SES emulator, a campaign with a segment sent end to end by the real daemon stages, a
progress bar, and at the end a report read through the report API from the reports database (a
second database in the embedded server, loaded by the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog

from mailerd import app, campaigns, logs
from mailerd import config as config_mod
from mailerd.db import connect, embedded, migrate
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks

log = structlog.get_logger(__name__)

ACCOUNT_ID = 1
DEMO_DATABASE = "mailerd_demo"
REPORTS_DATABASE = "mailerd_demo_reports"
SEGMENT = {
    "all": [
        {"field": "attributes.plan", "op": "in", "value": ["pro", "business", "enterprise"]},
        {"not": {"field": "attributes.country", "op": "eq", "value": "FR"}},
        {"field": "attributes.newsletter", "op": "eq", "value": True},
    ]
}
_FIRST = ["Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger"]
_COUNTRIES = ["US", "DE", "FR", "GB", "IN", "BR", "JP", "NL", "ES", "CA"]
_PLANS = ["free", "free", "free", "pro", "pro", "business", "enterprise"]


def generate_leads(count: int, seed: int = 7) -> list[tuple[int, str, dict[str, Any]]]:
    """Deterministic fake leads: (account_id, email, attributes)."""
    rng = random.Random(seed)
    start = dt.date(2022, 1, 1)
    leads = []
    for number in range(count):
        first = rng.choice(_FIRST)
        attributes = {
            "first_name": first,
            "country": rng.choice(_COUNTRIES),
            "plan": rng.choice(_PLANS),
            "age": rng.randint(18, 80),
            "score": round(rng.random() * 100, 1),
            "newsletter": rng.random() < 0.8,
            "signup_date": (start + dt.timedelta(days=rng.randint(0, 1400))).isoformat(),
        }
        leads.append((ACCOUNT_ID, f"{first.lower()}.{number}@example.com", attributes))
    return leads


async def _fresh_database(admin_dsn: str, name: str = DEMO_DATABASE) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return _with_database(admin_dsn, name)


def _with_database(dsn: str, name: str) -> str:
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


async def _seed(conn: asyncpg.Connection, count: int) -> int:
    leads = generate_leads(count)
    await conn.copy_records_to_table(
        "leads",
        records=leads,
        columns=("account_id", "email", "attributes"),
    )
    # A handful of addresses that bounced in an earlier life: every campaign skips them.
    suppressed = [e for _, e, _ in leads[:: max(1, count // 200)]]
    await conn.executemany(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES ($1, $2, 'hard_bounce', 'demo')",
        [(ACCOUNT_ID, e) for e in suppressed],
    )
    await conn.execute("ANALYZE leads")
    return len(suppressed)


class Progress:
    """A one-line progress bar on a terminal; a line every few seconds elsewhere."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def update(self, done: int, extra: str = "") -> None:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        share = min(done / self.total, 1.0)
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(
                f"\r[{bar:<30}] {done:,}/{self.total:,} {share:4.0%}  {rate:,.0f} emails/s  {extra}   "
            )
            self.stream.flush()
        elif elapsed - self._last_line >= 2 or done >= self.total:
            self._last_line = elapsed
            self.stream.write(f"progress {done:,}/{self.total:,} ({share:.0%}) {rate:,.0f} emails/s\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


async def run(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Run the demo; returns the exit status."""
    logs.configure("warning", "console" if sys.stderr.isatty() else "json")
    data_dir = args.data_dir or str(Path(tempfile.gettempdir()) / "mailerd-demo-pg")
    async with embedded.embedded_postgres(data_dir) as admin_dsn:
        dsn = await _fresh_database(admin_dsn)
        reports_dsn = await _fresh_database(admin_dsn, REPORTS_DATABASE)
        return await _run_demo(dsn, reports_dsn, args.leads, args.json, stop)


async def _run_demo(dsn: str, reports_dsn: str, lead_count: int, as_json: bool, stop: asyncio.Event) -> int:
    def say(text: str) -> None:
        if not as_json:
            print(text, file=sys.stderr)

    conn = await connect.connect(dsn)
    try:
        await migrate.migrate(conn)
        reports_conn = await connect.connect(reports_dsn)
        try:
            await migrate.migrate(reports_conn, migrate.REPORTS)
        finally:
            await reports_conn.close()
        say(f"seeding {lead_count:,} leads ...")
        preexisting = await _seed(conn, lead_count)
    finally:
        await conn.close()

    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="mailerd-demo-") as work_dir:
        # The emulator bounces 2% and gets complaints for 0.2% of what it accepts, posting them
        # back as signed SNS notifications, exactly as SES would through SNS.
        poster = emulator_webhooks.WebhookPoster(
            "http://127.0.0.1:1", "ses", bounce_rate=0.02, complaint_rate=0.002, seed=1
        )
        webhook_settings = poster.signer.daemon_settings(Path(work_dir))
        emulator = sink.Sink(seed=1, webhooks=poster)
        port = await emulator.start()
        config = config_mod.from_mapping(
            {
                # The emails go to the emulator; nobody follows their unsubscribe links.
                "http": {"listen": "127.0.0.1:0", "public_url": "https://mailerd.invalid"},
                "providers": {
                    "sink": {"kind": "sink", "endpoint": f"http://127.0.0.1:{port}", "concurrency": 8}
                },
                "scheduler": {"shard_size": 25_000, "max_shards_per_node": 4},
                "node": {"name": "demo"},
                "webhooks": {"ses": webhook_settings},
                # The relay loads the reports database; the report at the end is read from it.
                "reports": {"dsn": reports_dsn},
                "relay": {"poll_interval_ms": 100},
                # The emulator complains at 0.2%, well past the guard's default (0.08%, below
                # SES's review threshold), so that the demo shows suppression at work: a real
                # campaign with those figures would be paused, and its provider account held
                # (docs/guards.md).
                "guards": {"max_complaint_rate": 0.01, "provider_max_complaint_rate": 0.01},
            },
            env={"MAILERD_UNSUBSCRIBE__SECRET": secrets.token_hex(32), "MAILERD_ADMIN_TOKEN": token},
        )
        daemon_stop = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        daemon = asyncio.create_task(
            app.run_with_dsn(config, dsn, daemon_stop, on_ready=ready.set_result), name="daemon"
        )
        reports: list[dict[str, Any]] = []
        loaded: dict[str, Any] | None = None
        try:
            api = f"http://127.0.0.1:{await _ready(ready, daemon)}"
            poster.url = f"{api}/webhooks/ses"
            conn = await connect.connect(dsn)
            try:
                for name in ("Winter launch", "Winter launch, second wave"):
                    started = time.monotonic()
                    baseline = _owed(poster)
                    campaign_id = await campaigns.create(conn, _campaign(name), config)
                    say(f"\ncampaign {campaign_id} {name!r}: {orjson.dumps(SEGMENT).decode()}")
                    info = await _follow(conn, campaign_id, daemon, stop, as_json)
                    if info is None or info["status"] != "finished":
                        return 1
                    elapsed = time.monotonic() - started
                    say("waiting for the bounces and complaints to come back by webhook ...")
                    await _settle_webhooks(conn, poster, campaign_id, baseline, stop)
                    info = await campaigns.show(conn, campaign_id) or info
                    suppression_list = await conn.fetchval(
                        "SELECT count(*) FROM suppressions WHERE account_id = $1", ACCOUNT_ID
                    )
                    reports.append(_report(campaign_id, name, info, elapsed, suppression_list))
                    say(_describe(reports[-1]))
                say("\nwaiting for the relay to load the reports database ...")
                loaded = await _reports_report(api, token, reports[0], stop)
            finally:
                await conn.close()
        finally:
            await emulator.close()  # first: its last webhooks still reach the daemon
            daemon_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon
    first, second = reports
    summary = {
        "leads": lead_count,
        "matched": first["matched"],
        "sent": first["sent"],
        "failed": first["failed"],
        "unknown": first["unknown"],
        "suppressed": first["suppressed"],
        "elapsed_s": first["elapsed_s"],
        "emails_per_s": first["emails_per_s"],
        "bounced": first["bounced"],
        "complained": first["complained"],
        "suppression_list_before": preexisting,
        "suppression_list_after": first["suppression_list"],
        "second_campaign": second,
        "provider_calls": emulator.counters.calls,
        "webhooks_posted": poster.counters.posted,
        "report": loaded,
    }
    if as_json:
        print(orjson.dumps(summary).decode())
    else:
        if loaded is not None:
            print(_describe_loaded(loaded))
        print(
            f"\nThe second campaign skipped {second['suppressed']:,} suppressed addresses "
            f"({first['suppressed']:,} before the first one ran): bounces and complaints "
            "reported by webhook keep every later campaign off bad addresses."
        )
    return 0


async def _reports_report(
    api: str, token: str, first: dict[str, Any], stop: asyncio.Event
) -> dict[str, Any] | None:
    """GET /api/campaigns/{id}/report until the reports database has every email and event of the
    first campaign (as its counters say), then that report; None if it never does (60 s)."""
    url = f"{api}/api/campaigns/{first['id']}/report?top=5"
    headers = {"Authorization": f"Bearer {token}"}
    report: dict[str, Any] | None = None
    async with aiohttp.ClientSession(headers=headers) as session:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while not stop.is_set():
                    async with session.get(url) as response:
                        report = await response.json() if response.status == 200 else None
                    totals = report["totals"] if report else {}
                    if (
                        totals.get("sent") == first["sent"]
                        and totals.get("bounced_hard", 0) + totals.get("bounced_soft", 0) == first["bounced"]
                        and totals.get("complained") == first["complained"]
                    ):
                        return report
                    await asyncio.sleep(0.2)
    return report


def _describe_loaded(report: dict[str, Any]) -> str:
    totals, rates = report["totals"], report["rates"]
    lines = [
        f"\nReport of campaign {report['campaign_id']}, read from the reports database "
        f"({REPORTS_DATABASE}, as of {report['as_of']}):",
        f"  sent {totals['sent']:,}  bounced {totals['bounced_hard'] + totals['bounced_soft']:,} "
        f"({rates['bounce']:.2%})  complained {totals['complained']:,} ({rates['complaint']:.2%})",
        f"  {len(report['series'])} {report['granularity']}(s) in its time series",
    ]
    lines += [
        f"  top bounce reason: {reason['reason']!r} x {reason['count']:,}"
        for reason in report["top_bounce_reasons"][:1]
    ]
    return "\n".join(lines)


def _campaign(name: str) -> campaigns.NewCampaign:
    return campaigns.NewCampaign(
        account_id=ACCOUNT_ID,
        name=name,
        segment=SEGMENT,
        subject="{{ lead.attributes.first_name }}, our winter launch is here",
        html_body=(
            "<p>Hello {{ lead.attributes.first_name }},</p><p>It is here.</p>"
            '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
        ),
        text_body="Hello {{ lead.attributes.first_name }}, it is here.\nUnsubscribe: {{ unsubscribe_url }}",
        from_address="news@example.com",
        provider="sink",
        start=True,
    )


async def _ready(ready: asyncio.Future[int], daemon: asyncio.Task[int]) -> int:
    await asyncio.wait({ready, daemon}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        raise RuntimeError(f"the daemon stopped at start (exit {daemon.result()})")
    return ready.result()


def _owed(poster: emulator_webhooks.WebhookPoster) -> int:
    """The bounces and complaints the emulator decided on and will have delivered: less the posts
    that failed and those dropped from a full backlog."""
    counters = poster.counters
    return counters.bounces + counters.complaints - counters.failed - counters.dropped


async def _settle_webhooks(
    conn: asyncpg.Connection,
    poster: emulator_webhooks.WebhookPoster,
    campaign_id: int,
    baseline: int,
    stop: asyncio.Event,
) -> None:
    """Wait until the emulator has posted every bounce and complaint of this campaign and the
    counts settle (``baseline``: :func:`_owed` when the campaign began), so the report shows them
    and none is still queued when it closes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            while not stop.is_set():
                info = await campaigns.show(conn, campaign_id)
                assert info is not None
                if poster.pending == 0 and info["bounced"] + info["complained"] >= _owed(poster) - baseline:
                    return
                await asyncio.sleep(0.1)


def _report(
    campaign_id: int, name: str, info: dict[str, Any], elapsed: float, suppression_list: int
) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": name,
        "status": info["status"],
        "matched": info["matched"],
        "sent": info["sent"],
        "failed": info["failed"],
        "unknown": info["unknown"],
        "suppressed": info["suppressed"],
        "bounced": info["bounced"],
        "complained": info["complained"],
        "elapsed_s": round(elapsed, 2),
        "emails_per_s": round(info["processed"] / elapsed, 1) if elapsed else 0.0,
        "suppression_list": suppression_list,
    }


def _describe(report: dict[str, Any]) -> str:
    return (
        f"campaign {report['id']} {report['status']} in {report['elapsed_s']:.1f} s "
        f"({report['emails_per_s']:,.0f} emails/s)\n"
        f"  matched     {report['matched']:>10,}\n"
        f"  sent        {report['sent']:>10,}\n"
        f"  failed      {report['failed']:>10,}\n"
        f"  unknown     {report['unknown']:>10,}\n"
        f"  suppressed  {report['suppressed']:>10,}   (skipped: on the suppression list)\n"
        f"  bounced     {report['bounced']:>10,}   (reported back by webhook)\n"
        f"  complained  {report['complained']:>10,}\n"
        f"  suppression list now holds {report['suppression_list']:,} addresses"
    )


async def _follow(
    conn: asyncpg.Connection,
    campaign_id: int,
    daemon: asyncio.Task[int],
    stop: asyncio.Event,
    as_json: bool,
) -> dict[str, Any] | None:
    """Poll the campaign's counters until it finishes (or the user interrupts)."""
    progress: Progress | None = None
    info = await campaigns.show(conn, campaign_id)
    while not stop.is_set() and not daemon.done():
        info = await campaigns.show(conn, campaign_id)
        assert info is not None
        if info["shards"] and progress is None and not as_json:
            progress = Progress(info["matched"])
        if progress is not None:
            progress.update(info["processed"])
        if info["status"] in ("finished", "cancelled", "failed", "paused"):
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await stop.wait()
    if progress is not None:
        progress.close()
    if daemon.done() and daemon.exception() is not None:
        raise daemon.exception()  # type: ignore[misc]  # checked just above: not None
    return info
