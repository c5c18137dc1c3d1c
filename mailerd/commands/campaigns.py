"""``mailerd campaign ...``: create, show, act on and list campaigns through the admin API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from mailerd import client
from mailerd.campaigns import CampaignError
from mailerd.commands.terminal import printable
from mailerd.config import Config
from mailerd.importer import parsing as exact_json


def _read_template(path: str, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(field, f"cannot read {path}: {exc}") from None


async def create(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign create``: through the admin API; prints the new id (JSON with ``--json``)."""

    try:
        try:
            # its numbers as written (orjson alone rounds what a double cannot hold)
            segment = orjson.Fragment(exact_json.dumps_exact(exact_json.loads_exact(args.segment.encode())))
        except ValueError as exc:  # orjson.JSONDecodeError among them
            raise CampaignError("segment", f"not valid JSON: {exc}") from None
        body: dict[str, Any] = {
            "account_id": args.account,
            "name": args.name,
            "segment": segment,
            "subject": args.subject,
            "html": _read_template(args.html, "html"),
            "text": _read_template(args.text, "text"),
            "from": args.from_address,
            "provider": args.provider,
            "start": bool(args.start),
            "resend_uncertain": bool(args.resend_uncertain),
        }
        if args.send_at:
            body["send_at"] = args.send_at
        if args.rate is not None:
            body["rate"] = args.rate
        if args.send_window:
            try:
                body["send_window"] = orjson.loads(args.send_window)
            except orjson.JSONDecodeError as exc:
                raise CampaignError("send_window", f"not valid JSON: {exc}") from None
    except CampaignError as exc:
        print(f"mailerd campaign create: {exc}", file=sys.stderr)
        return 2
    url = client.base_url(args, config)
    try:
        created = await client.call("POST", f"{url}/api/campaigns", client.token(args, config), body)
    except client.ApiFailure as failure:
        return client.report_failure("campaign create", failure)
    if args.json:
        print(orjson.dumps({"id": created["id"], "status": created["status"]}).decode())
    else:
        print(created["id"])
    return 0


async def show(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign show ID``: status and counts, through the admin API."""

    url = client.base_url(args, config)
    try:
        info = await client.call("GET", f"{url}/api/campaigns/{args.id}", client.token(args, config))
    except client.ApiFailure as failure:
        return client.report_failure("campaign show", failure)
    if args.json:
        print(orjson.dumps(info).decode())
        return 0
    print(f"campaign {info['id']} {info['name']!r} (account {info['account_id']}): {info['status']}")
    if info.get("reason"):
        print(f"  reason: {printable(info['reason'])}")
    print(
        "  matched {matched:,}  sent {sent:,}  failed {failed:,}  unknown {unknown:,}  "
        "suppressed {suppressed:,}  retried {retried:,}".format(**info)
    )
    print(
        "  delivered {delivered:,}  bounced {bounced:,}  complained {complained:,}  "
        "unsubscribed {unsubscribed:,}".format(**info)
    )
    eta = f", ETA {info['eta_s']:.0f} s" if info.get("eta_s") is not None else ""
    print(f"  shards {info['shards_done']}/{info['shards']} done, {info['rate_per_s']:,.0f} emails/s{eta}")
    if info.get("send_window"):
        window = info["send_window"]
        print(
            f"  send window {window['start']}-{window['end']} {','.join(window['days'])}"
            f" (zone: attributes.{window['timezone_attribute']}, else {window['default_timezone']})"
        )
    if info.get("shards_waiting"):
        print(
            f"  {info['shards_waiting']} shards wait for their window; the next opens {info['waiting_until']}"
        )
    if info.get("quota_until"):
        print(
            f"  waits for provider {info['provider']}: {printable(info['quota_reason'])}; it sends again "
            f"from {info['quota_until']}"
        )
    return 0


async def act(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign start|pause|resume|cancel ID``."""

    url = client.base_url(args, config)
    action = args.campaign_command
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    try:
        info = await client.call(
            "POST", f"{url}/api/campaigns/{args.id}/{action}", client.token(args, config), body
        )
    except client.ApiFailure as failure:
        return client.report_failure(f"campaign {action}", failure)
    print(f"campaign {info['id']}: {info['status']}")
    return 0


async def list_all(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign list [--status S] [--account ID]``: every page, one line each."""

    url = client.base_url(args, config)
    after = 0
    bearer = client.token(args, config)
    rows: list[dict[str, Any]] = []
    try:
        while True:
            query = f"after={after}&limit=500"
            if args.status:
                query += f"&status={quote(args.status, safe='')}"  # "draft&account_id=2" stays one value
            if args.account is not None:
                query += f"&account_id={args.account}"
            page = await client.call("GET", f"{url}/api/campaigns?{query}", bearer)
            rows.extend(page["campaigns"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
    except client.ApiFailure as failure:
        return client.report_failure("campaign list", failure)
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    for row in rows:
        name = printable(row["name"])
        print(f"{row['id']:>8}  {row['status']:<10} {row['sent']:>10,}/{row['matched']:<10,} {name}")
    return 0
