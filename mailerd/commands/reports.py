"""``mailerd report campaign|usage|lead``: the report API's answers as tables (``--json``: as is)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson

from mailerd import client
from mailerd.commands.terminal import printable
from mailerd.config import Config

# Table columns: (heading, counter).
_COUNTS = (
    ("sent", "sent"),
    ("failed", "failed"),
    ("unknown", "unknown"),
    ("supp.", "suppressed"),
    ("deliv.", "delivered"),
    ("hard", "bounced_hard"),
    ("soft", "bounced_soft"),
    ("compl.", "complained"),
    ("unsub.", "unsubscribed"),
)


def table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: the first column left-aligned, numbers right-aligned with separators."""
    text = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headings)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    return "\n".join([line(headings), line(["-" * w for w in widths]), *(line(r) for r in text)])


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2%}"
    return printable(str(value))


def _as_of(answer: dict[str, Any]) -> str:
    return str(answer["as_of"] or "never (the relay has not loaded the reports database yet)")


def _count_cells(counts: dict[str, int]) -> list[int]:
    return [counts[key] for _, key in _COUNTS]


def _emit(args: argparse.Namespace, answer: dict[str, Any], text: str) -> int:
    print(orjson.dumps(answer).decode() if args.json else text)
    return 0


async def _get(args: argparse.Namespace, config: Config, path: str) -> dict[str, Any]:
    answer: dict[str, Any] = await client.call(
        "GET", client.base_url(args, config) + path, client.token(args, config)
    )
    return answer


async def campaign(args: argparse.Namespace, config: Config) -> int:
    """``mailerd report campaign ID``"""
    try:
        report = await _get(args, config, f"/api/campaigns/{args.id}/report?top={args.top}")
    except client.ApiFailure as failure:
        return client.report_failure("report campaign", failure)
    rates = report["rates"]
    lines = [
        f"campaign {report['campaign_id']} (account {report['account_id']}): {report['status']}, "
        f"as of {_as_of(report)}",
        "",
        table([h for h, _ in _COUNTS], [_count_cells(report["totals"])]),
        "",
        "delivery {delivery:.2%}  bounce {bounce:.2%} (hard {hard_bounce:.2%})  complaint {complaint:.2%}  "
        "unsubscribe {unsubscribe:.2%}".format(**rates),
        "",
        f"per {report['granularity']} (UTC):",
        table(
            ["at", *(h for h, _ in _COUNTS)],
            [[p["at"], *_count_cells(p["counts"])] for p in report["series"]],
        ),
        "",
        "top recipient domains:",
        table(["domain", "sent", "delivery", "bounce", "complaint"], _domain_rows(report["top_domains"])),
        "",
        "top bounce reasons:",
        table(
            ["reason", "bounce", "status", "count"],
            [
                [r["reason"] or "(none)", r["bounce"], r["smtp_status"], r["count"]]
                for r in report["top_bounce_reasons"]
            ],
        ),
    ]
    return _emit(args, report, "\n".join(lines))


def _domain_rows(domains: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            d["domain"] or "(none)",
            d["counts"]["sent"],
            d["rates"]["delivery"],
            d["rates"]["bounce"],
            d["rates"]["complaint"],
        ]
        for d in domains
    ]


async def usage(args: argparse.Namespace, config: Config) -> int:
    """``mailerd report usage --account ID [--from DAY] [--to DAY]``"""
    query = "&".join(
        f"{name}={value}" for name, value in (("from", args.start), ("to", args.end)) if value is not None
    )
    try:
        answer = await _get(args, config, f"/api/accounts/{args.account}/usage?{query}")
    except client.ApiFailure as failure:
        return client.report_failure("report usage", failure)
    rows = [[day["day"], *_count_cells(day["counts"])] for day in answer["days"]]
    rows.append(["total", *_count_cells(answer["totals"])])
    text = (
        f"account {answer['account_id']}, {answer['start']} to {answer['end']} (UTC days), "
        f"as of {_as_of(answer)}\n\n" + table(["day", *(h for h, _ in _COUNTS)], rows)
    )
    return _emit(args, answer, text)


async def lead(args: argparse.Namespace, config: Config) -> int:
    """``mailerd report lead --account ID (--lead ID | --email ADDRESS)``: every page, newest first."""
    if (args.lead is None) == (args.email is None):
        print("mailerd report lead: give exactly one of --lead and --email", file=sys.stderr)
        return 2
    base = (
        f"/api/leads/{args.lead}/history?account_id={args.account}"
        if args.lead is not None
        else f"/api/leads/history?account_id={args.account}&email={quote(args.email)}"
    )
    items: list[dict[str, Any]] = []
    before: str | None = None
    try:
        while True:
            page = await _get(args, config, base + "&limit=1000" + (f"&before={before}" if before else ""))
            items += page["items"]
            before = page["next_before"]
            if before is None or len(items) >= args.limit:
                break
    except client.ApiFailure as failure:
        return client.report_failure("report lead", failure)
    answer = {"as_of": page["as_of"], "account_id": page["account_id"], "items": items[: args.limit]}
    rows = [
        [i["at"], i["kind"], i["what"], i["campaign_id"], i["address"] or "", i["reason"] or ""]
        for i in answer["items"]
    ]
    text = f"as of {_as_of(answer)}\n\n" + table(
        ["at", "kind", "what", "campaign", "address", "reason"], rows
    )
    return _emit(args, answer, text)
