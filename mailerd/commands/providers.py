"""``mailerd providers ...``: each provider account's rolling 24 hours and hold, and the
operator's release of a hold, through the admin API (docs/guards.md)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

import orjson

from mailerd import client
from mailerd.commands.terminal import printable
from mailerd.config import Config


def _line(info: dict[str, Any]) -> str:
    rejected = info.get("rejected") or 0
    text = (
        f"{info['name']}: sent {info['sent']:,} in 24 h"
        + (f" (and {rejected:,} rejected in SMTP)" if rejected else "")
        + f", hard bounces {info['bounce_rate']:.3%}, "
        f"complaints {info['complaint_rate']:.3%}, blocks {info['blocked_rate']:.3%}"
    )
    hold = info.get("hold")
    if hold:
        text += f"\n  HELD since {hold['since']}: {printable(hold['reason'])}"
    quota = info.get("quota")
    if quota:
        limits = []
        if quota["daily_limit"] is not None:
            limits.append(f"daily quota {quota['reserved_24h']:,}/{quota['daily_limit']:,} in 24 h")
        if quota["warmup_limit"] is not None:
            day, today, cap = quota["warmup_day"], quota["reserved_today"], quota["warmup_limit"]
            limits.append(f"warm-up day {day}: {today:,}/{cap:,} today")
        text += "\n  " + ", ".join(limits) + f" (as of {quota['updated_at']})"
        if quota["exhausted_until"]:
            text += f"\n  WAITING until {quota['exhausted_until']}: {quota['exhausted_reason']}"
    return text


async def show(args: argparse.Namespace, config: Config) -> int:
    """``mailerd providers list`` / ``mailerd providers show NAME``."""
    url = client.base_url(args, config)
    name = getattr(args, "name", None)
    path = "/api/providers" if name is None else f"/api/providers/{quote(name, safe='')}"
    try:
        answer = await client.call("GET", f"{url}{path}", client.token(args, config))
    except client.ApiFailure as failure:
        return client.report_failure(f"providers {args.providers_command}", failure)
    if args.json:
        print(orjson.dumps(answer).decode())
        return 0
    for info in answer["items"] if name is None else [answer]:
        print(_line(info))
    return 0


async def resume(args: argparse.Namespace, config: Config) -> int:
    """``mailerd providers resume NAME --reason WHY [--by WHO]``: release the hold."""
    url = client.base_url(args, config)
    body = {"reason": args.reason, "by": args.by}
    try:
        answer = await client.call(
            "POST",
            f"{url}/api/providers/{quote(args.name, safe='')}/resume",
            client.token(args, config),
            body,
        )
    except client.ApiFailure as failure:
        return client.report_failure("providers resume", failure)
    resumed = ", ".join(str(i) for i in answer["resumed"]) or "none"
    print(f"provider {args.name}: released ({answer['released']['reason']}); campaigns resumed: {resumed}")
    return 0
