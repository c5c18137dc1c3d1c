"""Every command's arguments: the grammar of the ``mailerd`` command line (argparse).

What each command does is :mod:`mailerd.cli`'s; here are only the words it takes, their help and
the checks of single values (an account id, a time, a day) that argparse reports by name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Callable

from mailerd import config as config_mod
from mailerd import models


def _account_id(text: str) -> int:
    """An account id as the database stores it (a non-negative bigint), for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected 0 to {2**63 - 1}, got {text}")
    return value


def _limit(text: str) -> int:
    """How many entries to print: 1 or more (-1 printed all but the last, 0 nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {text}")
    return value


def _within(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``, for argparse: a usage error (exit 2) naming the option,
    not a failure (exit 1) found once the configuration was read."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        return value

    return parse


def _rate(text: str) -> float:
    """A finite rate of at least the API's floor, for argparse: nan and inf were sent as JSON
    null (no cap at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    floor = models.MIN_CAMPAIGN_RATE
    if not (math.isfinite(value) and value >= floor):
        raise argparse.ArgumentTypeError(f"expected a number of at least {floor:g}, got {text}")
    return value


def _campaign_id(text: str) -> int:
    """A campaign id (1 to 2^63 - 1), for argparse: a larger one reached the database (a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected 1 to {2**63 - 1}, got {text}")
    return value


def _timestamp(text: str) -> dt.datetime:
    """An ISO-8601 time for argparse (no zone: UTC), within the years 1 to 9999 once in UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time, got {text!r}") from None
    value = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the year 1 in UTC
        raise argparse.ArgumentTypeError(f"{text!r} is out of range once in UTC") from None


def _listen(text: str) -> str:
    """HOST:PORT for argparse: a bad one was found once the command ran, exit 1 as a failure."""
    try:
        config_mod.parse_listen(text)
    except config_mod.ConfigError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    return text


def _day(text: str) -> dt.date:
    """A UTC day (YYYY-MM-DD) for argparse."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML configuration (default: $MAILERD_CONFIG or {config_mod.DEFAULT_CONFIG_PATH})",
    )
    api = argparse.ArgumentParser(add_help=False, parents=[common])
    api.add_argument("--url", default=None, help="admin API base URL (default: from [http] listen)")
    api.add_argument("--token", default=None, help="admin token (default: $MAILERD_ADMIN_TOKEN)")
    parser = argparse.ArgumentParser(prog="mailerd", description="Email campaign delivery daemon.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon until SIGTERM")
    sub.add_parser("migrate", parents=[common], help="apply pending database migrations (and the reports')")
    reports = sub.add_parser("reports", help="the reports database").add_subparsers(
        dest="reports_command", required=True
    )
    reports.add_parser("migrate", parents=[common], help="apply pending migrations of the reports database")
    p = sub.add_parser("partitions", parents=[common], help="create partitions ahead, drop old ones")
    # 100000 made partitions to 2300. 1 is allowed here, unlike in the config: an on-demand run that
    # creates fewer days removes none, and the daemon's rounds still create the configured ones.
    p.add_argument(
        "--days",
        type=_within(1, 366),
        default=None,
        help="days ahead to create, 1 to 366 (default: config, 7)",
    )
    sub.add_parser("check-config", parents=[common], help="print the resolved configuration, redacted")

    segment = sub.add_parser("segment", help="segment tools").add_subparsers(
        dest="segment_command", required=True
    )
    p = segment.add_parser("count", parents=[common], help="count the leads a segment matches")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("segment", help="the segment as JSON")

    leads = sub.add_parser("leads", help="lead tools").add_subparsers(dest="leads_command", required=True)
    p = leads.add_parser("import", parents=[common], help="import leads from .csv or .jsonl")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("--types", default=None, help="column types, e.g. age=number,vip=boolean,zip=string")
    p.add_argument("--rejects", default=None, metavar="FILE", help="write every rejected row here")
    p.add_argument("file", help="a .csv (with a header row) or .jsonl file")
    p = leads.add_parser(
        "erase", parents=[common], help="erase people from an account everywhere mailerd keeps them (GDPR)"
    )
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("--by", default="cli", help="who asks (recorded with the erasure; default cli)")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", help="the addresses to erase")

    # --- suppressions ---
    suppress = sub.add_parser("suppressions", help="the suppression list").add_subparsers(
        dest="suppressions_command", required=True
    )
    p = suppress.add_parser("import", parents=[common], help="import addresses (one a line, or CSV)")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("--reason", default=None, help="reason recorded (default: imported; CSV column wins)")
    p.add_argument("--rejects", default=None, metavar="FILE", help="write every rejected line here")
    p.add_argument("file", help="one address per line, or a CSV with an 'email' (and 'reason') column")
    p = suppress.add_parser("list", parents=[common], help="list an account's suppressions")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("--after", default="", help="start after this address (keyset pagination)")
    p.add_argument("--limit", type=_within(1, 10_000), default=100, help="1 to 10000 (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    for action in ("add", "remove"):
        p = suppress.add_parser(action, parents=[common], help=f"{action} one address")
        p.add_argument("--account", type=_account_id, required=True, help="account id")
        p.add_argument("--reason", required=action == "remove", default=None, help="why (required to remove)")
        p.add_argument("email")

    campaign = sub.add_parser("campaign", help="campaigns").add_subparsers(
        dest="campaign_command", required=True
    )
    p = campaign.add_parser("create", parents=[api], help="create a campaign")
    p.add_argument("--account", type=_account_id, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--segment", required=True, help="segment JSON")
    p.add_argument("--subject", required=True, help="subject template")
    p.add_argument("--html", required=True, metavar="FILE", help="HTML body template file")
    p.add_argument("--text", required=True, metavar="FILE", help="text body template file")
    p.add_argument("--from", dest="from_address", required=True, metavar="ADDRESS")
    p.add_argument("--provider", required=True, help="a [providers.NAME] of the configuration")
    p.add_argument("--rate", type=_rate, default=None, help="per-campaign cap, recipients per second")
    p.add_argument("--resend-uncertain", action="store_true", help="re-send leads in flight at a crash")
    p.add_argument(
        "--send-window",
        default=None,
        metavar="JSON",
        help='send window JSON, e.g. {"start": "09:00", "end": "17:00", "days": ["mon", "fri"]}',
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--start", action="store_true", help="start sending now")
    when.add_argument("--send-at", default=None, metavar="TIME", help="ISO-8601 time to start")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = campaign.add_parser("show", parents=[api], help="status and counts of a campaign")
    p.add_argument("id", type=_campaign_id)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = campaign.add_parser("list", parents=[api], help="list campaigns")
    p.add_argument("--status", default=None)
    p.add_argument("--account", type=_account_id, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    for action in ("start", "pause", "resume", "cancel"):
        p = campaign.add_parser(action, parents=[api], help=f"{action} a campaign on every node")
        p.add_argument("id", type=_campaign_id)
        if action in ("pause", "resume", "cancel"):
            p.add_argument("--reason", default=None, help="recorded with the status")

    # --- providers (through the admin API) ---
    provider = sub.add_parser("providers", help="provider accounts: rolling 24 h and holds").add_subparsers(
        dest="providers_command", required=True
    )
    p = provider.add_parser("list", parents=[api], help="every provider's rolling 24 hours and hold")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = provider.add_parser("show", parents=[api], help="one provider's rolling 24 hours and hold")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = provider.add_parser(
        "resume", parents=[api], help="release a provider the guard holds and resume its paused campaigns"
    )
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why it is safe to send again (recorded)")
    p.add_argument("--by", default="cli", help="who releases it (recorded; default cli)")

    # --- relay ---
    relay = sub.add_parser("relay", help="the event stream (Kafka, callbacks)").add_subparsers(
        dest="relay_command", required=True
    )
    relay.add_parser("run", parents=[common], help="run the relay alone, in this process, until SIGTERM")
    p = relay.add_parser("status", parents=[common], help="each destination's position, lag and last error")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = relay.add_parser("replay", parents=[common], help="re-send records through a destination")
    p.add_argument("--destination", required=True, help="kafka, callbacks.NAME, ...")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--from", dest="start", type=_timestamp, metavar="TIME", help="ISO-8601 start (inclusive)"
    )
    what.add_argument("--dead-letters", action="store_true", help="the records the destination refused")
    p.add_argument(
        "--to", dest="end", type=_timestamp, default=None, metavar="TIME", help="end (default now)"
    )
    p.add_argument("--campaign", type=_campaign_id, default=None, help="only this campaign's records")

    # --- reports (through the admin API) ---
    report = sub.add_parser("report", help="reports from the reports database").add_subparsers(
        dest="report_command", required=True
    )
    p = report.add_parser(
        "campaign", parents=[api], help="a campaign's totals, rates, series, domains, bounces"
    )
    p.add_argument("id", type=_campaign_id)
    p.add_argument(
        "--top",
        type=_within(1, 100),
        default=10,
        help="domains and bounce reasons shown, 1 to 100 (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = report.add_parser("usage", parents=[api], help="an account's emails and events per UTC day")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument(
        "--from",
        dest="start",
        type=_day,
        default=None,
        metavar="DAY",
        help="first day (default: 30 days ago)",
    )
    p.add_argument(
        "--to", dest="end", type=_day, default=None, metavar="DAY", help="last day, included (default today)"
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = report.add_parser("lead", parents=[api], help="a lead's emails and events, newest first")
    p.add_argument("--account", type=_account_id, required=True, help="account id")
    p.add_argument("--lead", type=_account_id, default=None, metavar="ID", help="the lead's id")
    p.add_argument("--email", default=None, metavar="ADDRESS", help="or the lead's address")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many entries (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = sub.add_parser("sink", help="run a provider emulator (SES v2 by default) on a local port")
    p.add_argument("--listen", type=_listen, default="127.0.0.1:8026", help="HOST:PORT")
    p.add_argument(
        "--api", default="ses", choices=("ses", "sendgrid", "mailgun", "postmark"), help="the provider's API"
    )
    p.add_argument(
        "--smtp", type=_listen, default=None, metavar="HOST:PORT", help="an SMTP server instead of an API"
    )
    p.add_argument("--api-key", default=None, help="accept only this key (default: any well-formed one)")
    p.add_argument("--record", default=None, metavar="FILE.jsonl", help="append accepted recipients")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per call")
    p.add_argument("--throttle-rate", type=float, default=0.0, help="recipients/s before 429 (0: never)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of per-entry failures")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "--max-24-hour-send",
        type=float,
        default=-1.0,
        help="ses: the account's daily quota GetAccount reports and calls past it are refused (-1: none)",
    )
    p.add_argument("--webhook-url", default=None, help="daemon base URL to post bounce/complaint webhooks to")
    p.add_argument(
        "--webhook-format",
        default=None,
        choices=("ses", "sendgrid", "mailgun", "postmark"),
        help="default: the --api's own (ses for --smtp)",
    )
    p.add_argument("--bounce-rate", type=float, default=0.0, help="share of recipients that hard-bounce")
    p.add_argument("--complaint-rate", type=float, default=0.0, help="share of recipients that complain")
    p.add_argument(
        "--block-rate",
        type=float,
        default=0.0,
        help="share of recipients whose bounce is a reputation or authentication block",
    )
    p.add_argument(
        "--webhook-settings",
        default=None,
        metavar="DIR",
        help="write the daemon's verification settings here",
    )

    p = sub.add_parser(
        "files", help="list the operations files shipped with mailerd, or print one (example config, units)"
    )
    p.add_argument("name", nargs="?", help="the file to print on stdout (default: list them)")

    p = sub.add_parser("demo", parents=[common], help="run a whole campaign on an embedded database")
    p.add_argument(
        "--leads",
        type=_within(1, 10_000_000),
        default=100_000,
        help="leads to generate, 1 to 10000000 (default 100000)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--data-dir", default=None, help="embedded Postgres data directory")
    return parser
