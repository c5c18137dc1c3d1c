"""Fault injection at scale: the e2e scenarios (tests/e2e) with more rounds, and the full
30-second Postgres outage.

    python bench/faults.py [--rounds N] [--outage-s S] [--only NAME ...] [--providers KIND ...]
                           [--dsn DSN] [--json]

Every scenario runs once per provider kind (``--providers``, default all: ses, sendgrid,
mailgun, postmark, smtp), each through its emulator.

Each kill/pause scenario runs on a fresh database ``mailerd_faults_<random>`` on the server
(``--dsn``, else ``$MAILERD_TEST_DSN``, else the local default), dropped afterwards; the outage
runs on a private cluster (initdb + pg_ctl in a temp dir) that is stopped and started again.
Daemons are real ``mailerd run`` processes, SIGKILLed at random moments; the sink runs in this
process and records every accepted recipient.

Per scenario: rounds, leads, duplicates (extra emails in the sink's record), losses (matched
leads without a row, emailed leads logged neither sent nor unknown, or sent rows never
emailed), unknown rows, the largest number of leads one crash left uncertain against the
in-flight bound, takeover time (kill -> another node claims one of the dead node's shards) and
pause latency (pause call -> the last SendBulkEmail call the sink received).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailerd.db import connect, migrate
from tests.e2e import procs, scenarios

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
NAMES = ("single", "two-nodes", "pause-resume", "resend-uncertain", "outage")


def _scenarios(rounds: int, kind: str) -> list[scenarios.Scenario]:
    leads = max(9000, rounds * 4500)  # a third match: about 1,500 matched leads per round
    return [
        scenarios.Scenario("single", leads=leads, kills=rounds, seed=101, kind=kind),
        scenarios.Scenario(
            "two-nodes", leads=leads, nodes=2, kills=rounds, rate_per_s=600.0, seed=102, kind=kind
        ),
        scenarios.Scenario(
            "pause-resume", leads=leads, kills=rounds // 2, pauses=rounds, seed=103, kind=kind
        ),
        scenarios.Scenario(
            "resend-uncertain", leads=leads, kills=rounds // 2, resend_uncertain=True, seed=104, kind=kind
        ),
    ]


@asynccontextmanager
async def _fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    name = f"mailerd_faults_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(admin_dsn)
    dsn = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await connect.connect(dsn)
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    wanted = set(args.only or NAMES)
    for kind in args.providers:
        results += await _run_kind(args, kind, wanted)
    return results


async def _run_kind(args: argparse.Namespace, kind: str, wanted: set[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for scenario in _scenarios(args.rounds, kind):
        if scenario.name not in wanted:
            continue
        try:
            async with _fresh_database(args.dsn) as dsn:
                with tempfile.TemporaryDirectory(prefix="mailerd-faults-") as workdir:
                    result = await scenarios.run_scenario(dsn, Path(workdir), scenario)
            figures = result.figures()
            figures["unknown_per_crash"] = result.uncertain_per_crash
        except Exception as exc:  # a broken scenario is a finding: report it, run the others
            figures = {
                "scenario": scenario.name,
                "provider": kind,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
            }
        results.append(figures)
        _progress(figures, args.json)
    if "outage" in wanted:
        server = procs.PrivatePostgres()
        try:
            await asyncio.to_thread(server.init)
            await asyncio.to_thread(server.start)
            with tempfile.TemporaryDirectory(prefix="mailerd-faults-") as workdir:
                outage = await scenarios.run_outage(
                    server,
                    Path(workdir),
                    outage_s=args.outage_s,
                    leads=max(9000, args.rounds * 4500),
                    kind=kind,
                )
            figures = outage.figures()
        except Exception as exc:  # e.g. the daemon died during the outage
            figures = {"scenario": "outage", "provider": kind, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        finally:
            await asyncio.to_thread(server.cleanup)
        results.append(figures)
        _progress(figures, args.json)
    return results


def _progress(figures: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    print(f"\n== {figures['scenario']} ({figures.get('provider')})")
    for key, value in figures.items():
        if key not in ("scenario", "provider"):
            print(f"  {key:<26} {value}")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="kills (and pauses) per scenario")
    parser.add_argument("--outage-s", type=float, default=30.0, help="Postgres outage length")
    parser.add_argument("--only", nargs="*", choices=NAMES, help="run only these scenarios")
    parser.add_argument(
        "--providers", nargs="*", choices=procs.KINDS, default=list(procs.KINDS), help="provider kinds to run"
    )
    parser.add_argument("--dsn", default=os.environ.get("MAILERD_TEST_DSN", DEFAULT_DSN))
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)
    results = asyncio.run(_run(args))
    failed = [
        f"{r['scenario']} ({r.get('provider')})"
        for r in results
        if "error" in r
        or (r["duplicates"] and r["scenario"] != "resend-uncertain")
        or r["losses"]
        or r["multi_rows"]
        or (r["scenario"].startswith("postgres-outage") and r["unknown"])
    ]
    if args.json:
        sys.stdout.write(orjson.dumps({"scenarios": results, "failed": failed}).decode() + "\n")
    elif failed:
        print(f"\nguarantees broken in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
