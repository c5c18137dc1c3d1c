"""The SES provider against the loopback sink: in process, and the sink as a subprocess."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from mailerd.config import ProviderConfig
from mailerd.emulator import sink as sink_mod
from mailerd.models import (
    Batch,
    Campaign,
    CampaignStatus,
    HaltError,
    Lead,
    Outcome,
    PermanentError,
    RetryableError,
    SendQuota,
)
from mailerd.providers import ses


def make_campaign(campaign_id: int = 7, **overrides: Any) -> Campaign:
    values: dict[str, Any] = {
        "id": campaign_id,
        "account_id": 3,
        "name": "Spring",
        "status": CampaignStatus.RUNNING,
        "segment": None,
        "from_address": "news@example.com",
        "subject": "Hi {{ lead.attributes.first_name }}",
        "html_body": "<p>Hello {{ lead.attributes.first_name }}</p>",
        "text_body": "Hello {{ lead.attributes.first_name }}",
        "provider": "sink",
    }
    values.update(overrides)
    return Campaign(**values)


def make_batch(campaign: Campaign, count: int = 50, first_id: int = 1) -> Batch:
    leads = [
        Lead(i, f"lead{i}@example.com", {"first_name": f"N{i}"}) for i in range(first_id, first_id + count)
    ]
    return Batch(campaign=campaign, shard_no=0, seq=0, leads=leads, upto=leads[-1].id)


def read_record(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[sink_mod.Sink]:
    emulator = sink_mod.Sink(record=tmp_path / "record.jsonl", seed=1)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.close()


@pytest.fixture
async def provider(sink: sink_mod.Sink) -> AsyncIterator[ses.SesProvider]:
    client = ses.SesProvider(ProviderConfig(name="loop", kind="sink", endpoint=sink.url))
    try:
        yield client
    finally:
        await client.close()


async def test_batch_of_50_is_sent_and_recorded(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    campaign = make_campaign()
    await provider.prepare(campaign)
    assert sink.templates["mailerd-campaign-7"] == {
        "Subject": "Hi {{{lead_attributes_first_name}}}",
        "Html": "<p>Hello {{lead_attributes_first_name}}</p>",
        "Text": "Hello {{{lead_attributes_first_name}}}",
    }
    batch = make_batch(campaign)
    results = await provider.send(batch)

    assert [r.outcome for r in results] == [Outcome.SENT] * 50
    message_ids = [r.message_id for r in results]
    assert len(set(message_ids)) == 50 and all(message_ids)
    await sink.flush()
    assert sink.record is not None
    record = read_record(sink.record)
    assert record == [
        {"campaign_id": 7, "lead_id": lead.id, "email": lead.email, "message_id": mid}
        for lead, mid in zip(batch.leads, message_ids, strict=True)
    ]
    assert sink.counters.accepted == 50


async def test_prepare_is_idempotent_across_restarts(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    await provider.prepare(make_campaign())
    await provider.prepare(make_campaign())  # cached: no call
    restarted = ses.SesProvider(ProviderConfig(name="loop", kind="sink", endpoint=sink.url))
    try:
        changed = make_campaign(subject="New {{ campaign.name }}")
        await restarted.prepare(changed)  # AlreadyExists -> the content is overwritten
        assert sink.templates["mailerd-campaign-7"]["Subject"] == "New {{{campaign_name}}}"
        results = await restarted.send(make_batch(changed, 2))
        assert [r.outcome for r in results] == [Outcome.SENT] * 2
    finally:
        await restarted.close()


async def test_send_prepares_an_unprepared_campaign(provider: ses.SesProvider) -> None:
    results = await provider.send(make_batch(make_campaign(), 3))
    assert [r.outcome for r in results] == [Outcome.SENT] * 3


async def test_throttled_call_is_retryable(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    sink.throttle_rate = 10  # a burst of one full call, then 10 recipients/s
    campaign = make_campaign()
    assert len(await provider.send(make_batch(campaign))) == 50
    with pytest.raises(RetryableError, match=r"^TooManyRequestsException: ") as info:
        await provider.send(make_batch(campaign, first_id=100))
    assert info.value.retry_after is None  # SES sends no Retry-After
    assert sink.counters.throttled_calls == 1
    assert sink.counters.accepted == 50


async def test_entry_failures_are_failed_or_retryable_with_reasons(
    sink: sink_mod.Sink, provider: ses.SesProvider
) -> None:
    sink.fail_rate = 1.0
    results = await provider.send(make_batch(make_campaign()))
    outcomes = {r.outcome for r in results}
    assert outcomes == {Outcome.FAILED, Outcome.RETRY}
    for result in results:
        assert result.message_id is None
        expected = "MESSAGE_REJECTED: " if result.outcome is Outcome.FAILED else "TRANSIENT_FAILURE: "
        assert result.error is not None and result.error.startswith(expected)
    await sink.flush()
    assert sink.record is not None and read_record(sink.record) == []
    assert sink.counters.failed_entries == 50


async def test_missing_template_is_retryable_and_recreated(
    sink: sink_mod.Sink, provider: ses.SesProvider
) -> None:
    campaign = make_campaign()
    await provider.prepare(campaign)
    sink.templates.clear()
    with pytest.raises(RetryableError, match=r"^NotFoundException: Template mailerd-campaign-7"):
        await provider.send(make_batch(campaign))
    results = await provider.send(make_batch(campaign))  # the retry creates it again
    assert [r.outcome for r in results] == [Outcome.SENT] * 50


async def test_sending_paused_halts(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    sink.force_error = (400, "SendingPausedException", "Sending is paused for this account.")
    with pytest.raises(HaltError, match=r"^SendingPausedException: Sending is paused"):
        await provider.send(make_batch(make_campaign()))


async def test_bad_request_names_the_problem(provider: ses.SesProvider) -> None:
    await provider.prepare(make_campaign())
    bad = {
        "FromEmailAddress": "news@example.com",
        "DefaultContent": {"Template": {"TemplateName": "mailerd-campaign-7", "TemplateData": "{}"}},
        "BulkEmailEntries": [{"Destination": {"ToAddresses": []}}],
    }
    with pytest.raises(PermanentError, match=r"^BadRequestException: BulkEmailEntries\[0\]\."):
        await provider._call("POST", ses.SEND_BULK_PATH, bad)


async def test_unsigned_request_is_forbidden(sink: sink_mod.Sink) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sink.url + ses.ACCOUNT_PATH) as response,
    ):
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert "message" in await response.json()


async def test_send_quota_reads_the_account_limits(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    sink.max_send_rate = 14.0
    assert await provider.send_quota() == SendQuota(14.0, None)  # Max24HourSend -1: unlimited
    sink.max_24_hour_send = 200.0
    assert await provider.send_quota() == SendQuota(14.0, 200)


async def test_the_sink_refuses_calls_past_the_daily_quota(
    sink: sink_mod.Sink, provider: ses.SesProvider
) -> None:
    sink.max_24_hour_send = 3.0
    campaign = make_campaign()
    await provider.prepare(campaign)
    sent = await provider.send(make_batch(campaign, 3))
    assert [r.outcome for r in sent] == [Outcome.SENT] * 3
    with pytest.raises(RetryableError, match="Daily message quota exceeded"):
        await provider.send(make_batch(campaign, 1))
    assert sink.quota_refused_calls == 1


async def test_generic_template_and_render_failures(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    campaign = make_campaign(subject="{{ 100 // lead.attributes.d }} {{ lead.email | upper }}")
    await provider.prepare(campaign)
    assert sink.templates["mailerd-campaign-7"]["Subject"] == "{{{subject}}}"
    batch = make_batch(campaign, 3)
    batch.leads[0].attributes["d"] = 4
    batch.leads[1].attributes["d"] = 0  # ZeroDivisionError: this lead only
    batch.leads[2].attributes["d"] = 5
    results = await provider.send(batch)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert results[1].error is not None and "ZeroDivisionError" in results[1].error
    await sink.flush()
    assert sink.record is not None
    assert [row["lead_id"] for row in read_record(sink.record)] == [1, 3]


async def test_an_address_that_is_not_one_mailbox_fails_only_its_recipient(
    sink: sink_mod.Sink, provider: ses.SesProvider
) -> None:
    # written by the host application: SES refused the whole call, every lead failed
    batch = make_batch(make_campaign(), 3)
    batch.leads[1] = Lead(2, "lead2.example.com", {"first_name": "N2"})
    results = await provider.send(batch)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    await sink.flush()
    assert sink.record is not None
    assert [row["lead_id"] for row in read_record(sink.record)] == [1, 3]


async def test_record_is_flushed_by_time(sink: sink_mod.Sink, provider: ses.SesProvider) -> None:
    await provider.send(make_batch(make_campaign(), 5))
    assert sink.record is not None
    async with asyncio.timeout(5):
        # The file is the observable: nothing in the sink signals a timed flush.
        while len(sink.record.read_bytes().splitlines()) < 5:
            await asyncio.sleep(0.02)


async def test_sink_command_runs_until_sigterm(tmp_path: Path) -> None:
    record = tmp_path / "cli.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        "sink",
        "--listen",
        "127.0.0.1:0",
        "--record",
        str(record),
        "--seed",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("sink listening on 127.0.0.1:"), line
        url = "http://" + line.rsplit(" ", 1)[1].strip()
        client = ses.SesProvider(ProviderConfig(name="loop", kind="sink", endpoint=url))
        try:
            results = await client.send(make_batch(make_campaign()))
        finally:
            await client.close()
        assert [r.outcome for r in results] == [Outcome.SENT] * 50
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    rows = read_record(record)
    assert [(r["campaign_id"], r["lead_id"], r["email"]) for r in rows] == [
        (7, i, f"lead{i}@example.com") for i in range(1, 51)
    ]
    assert [r["message_id"] for r in rows] == [r.message_id for r in results]
