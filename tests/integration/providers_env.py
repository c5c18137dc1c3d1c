"""Each provider kind with its emulator, for the client tests: one place that knows how a client
is configured against its emulator, and what a campaign and a batch look like."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from mailerd.config import ContentConfig, ProviderConfig, Secret
from mailerd.emulator import sink
from mailerd.emulator.base import Emulator
from mailerd.models import Batch, Campaign, CampaignStatus, Lead
from mailerd.providers import create
from mailerd.providers.base import Provider

KINDS = ("sendgrid", "mailgun", "postmark", "smtp")
API_KEY = "test-key-0123456789"


def campaign(campaign_id: int = 7, **overrides: Any) -> Campaign:
    values: dict[str, Any] = {
        "id": campaign_id,
        "account_id": 3,
        "name": "Spring",
        "status": CampaignStatus.RUNNING,
        "segment": None,
        "from_address": "News <news@example.com>",
        "subject": "Hi {{ lead.attributes.first_name }}",
        "html_body": "<p>Hello {{ lead.attributes.first_name }} & co</p>",
        "text_body": "Hello {{ lead.attributes.first_name }}",
        "provider": "p",
    }
    values.update(overrides)
    return Campaign(**values)


def batch(camp: Campaign, count: int = 20, first_id: int = 1) -> Batch:
    leads = [
        Lead(i, f"lead{i}@example.com", {"first_name": f"N{i}<b>"}) for i in range(first_id, first_id + count)
    ]
    return Batch(campaign=camp, shard_no=0, seq=0, leads=leads, upto=leads[-1].id)


def provider_config(kind: str, emulator: Emulator, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {"name": kind, "kind": kind, "endpoint": emulator.url, "timeout_s": 5.0}
    if kind == "smtp":
        values.update(tls="none", endpoint=f"127.0.0.1:{emulator.port}", connections=2)
    else:
        values["api_key"] = Secret(API_KEY)
    if kind == "mailgun":
        values["domain"] = "mg.example.com"
    values.update(overrides)
    return ProviderConfig(**values)


def unsubscribe_url(camp: Campaign, lead: Lead) -> str:
    return f"https://mailerd.example/u/{camp.id}-{lead.id}"


@contextlib.asynccontextmanager
async def running(
    kind: str, tmp_path: Path, *, limits: ContentConfig | None = None, **knobs: Any
) -> AsyncIterator[tuple[Emulator, Provider]]:
    """The kind's emulator (recording to ``tmp_path/record.jsonl``) and a client pointed at it."""
    emulator = sink.EMULATORS[kind](record=tmp_path / "record.jsonl", seed=1, api_key=API_KEY, **knobs)
    async with emulator:
        client = create(provider_config(kind, emulator), unsubscribe=unsubscribe_url, content_limits=limits)
        try:
            yield emulator, client
        finally:
            await client.close()


async def record(emulator: Emulator) -> list[dict[str, Any]]:
    await emulator.flush()
    assert emulator.record is not None
    if not emulator.record.exists():
        return []
    return [orjson.loads(line) for line in emulator.record.read_bytes().splitlines()]
