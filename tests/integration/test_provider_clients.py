"""The SendGrid, Mailgun, Postmark and SMTP clients against their emulators: what is sent, what
each answer becomes (sent, retry, failed, halt, unknown), and the template budget."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailerd.config import ContentConfig, Secret
from mailerd.emulator.smtp_server import SmtpEmulator
from mailerd.models import CampaignBroken, HaltError, Lead, Outcome, RetryableError
from mailerd.providers import create, smtp
from tests.integration import providers_env as env

API_KINDS = ("sendgrid", "mailgun", "postmark")


@pytest.mark.parametrize("kind", env.KINDS)
async def test_a_batch_is_sent_once_per_lead_with_our_ids(kind: str, tmp_path: Path) -> None:
    async with env.running(kind, tmp_path) as (emulator, client):
        camp = env.campaign()
        await client.prepare(camp)
        sent = env.batch(camp, 20)
        results = await client.send(sent)
        assert [r.outcome for r in results] == [Outcome.SENT] * 20
        assert all(r.message_id for r in results)
        lines = await env.record(emulator)
    assert sorted((line["campaign_id"], line["lead_id"], line["email"]) for line in lines) == [
        (7, lead.id, lead.email) for lead in sent.leads
    ]


@pytest.mark.parametrize("kind", env.KINDS)
async def test_throttling_is_retried(kind: str, tmp_path: Path) -> None:
    async with env.running(kind, tmp_path, throttle_rate=0.001) as (emulator, client):
        emulator.throttled(int(emulator._bucket.tokens()))  # spend the burst: the next call is throttled
        if kind == "smtp":
            results = await client.send(env.batch(env.campaign(), 5))
            assert {r.outcome for r in results} == {Outcome.RETRY}
            assert all("451" in (r.error or "") for r in results)
        else:
            with pytest.raises(RetryableError) as caught:
                await client.send(env.batch(env.campaign(), 5))
            assert "429" in caught.value.reason
            if kind == "sendgrid":  # X-RateLimit-Reset: about a second from now
                assert caught.value.retry_after is not None and 0 <= caught.value.retry_after <= 2
        assert emulator.counters.accepted == 0


@pytest.mark.parametrize("kind", API_KINDS)
async def test_a_refused_key_halts(kind: str, tmp_path: Path) -> None:
    async with env.running(kind, tmp_path) as (emulator, _):
        wrong = create(env.provider_config(kind, emulator, api_key=Secret("wrong-key")))
        try:
            with pytest.raises(HaltError, match="401"):
                await wrong.send(env.batch(env.campaign(), 3))
        finally:
            await wrong.close()
        assert emulator.counters.accepted == 0


@pytest.mark.parametrize("kind", env.KINDS)
async def test_failures_are_classified(kind: str, tmp_path: Path) -> None:
    async with env.running(kind, tmp_path, fail_rate=1.0) as (_, client):
        if kind in ("sendgrid", "mailgun"):  # no per-recipient answer: the call fails, with 500
            with pytest.raises(RetryableError, match="500"):
                await client.send(env.batch(env.campaign(), 5))
            return
        results = await client.send(env.batch(env.campaign(), 10))
    if kind == "postmark":
        assert {r.outcome for r in results} == {Outcome.FAILED}
        assert all((r.error or "").startswith("406: ") for r in results)
    else:  # smtp: 550 failed, 450 retried
        assert {r.outcome for r in results} == {Outcome.FAILED, Outcome.RETRY}
        for result in results:
            code = "550" if result.outcome is Outcome.FAILED else "450"
            assert (result.error or "").startswith(code)


@pytest.mark.parametrize("kind", env.KINDS)
async def test_a_render_over_budget_fails_the_send_before_anything_goes(kind: str, tmp_path: Path) -> None:
    limits = ContentConfig(max_loop_iterations=10)
    async with env.running(kind, tmp_path, limits=limits) as (emulator, client):
        camp = env.campaign(
            html_body="{% for i in range(5) %}{{ i }}{% endfor %}{{ lead.email }}", text_body=""
        )
        camp = env.campaign(
            html_body="{% for i in range(5) %}{{ i }}{% endfor %}"
            "{% if lead.id == 3 %}{% for i in range(100) %}{{ i }}{% endfor %}{% endif %}",
            text_body="",
        )
        with pytest.raises(CampaignBroken, match=r"lead 3: .*template budget exceeded"):
            await client.send(env.batch(camp, 5))
        assert emulator.counters.accepted == 0


@pytest.mark.parametrize("kind", env.KINDS)
async def test_a_render_error_fails_only_its_recipient(kind: str, tmp_path: Path) -> None:
    async with env.running(kind, tmp_path) as (_, client):
        camp = env.campaign(subject="{{ 10 // lead.attributes.n }}", html_body="<p>{{ lead.id }}</p>")
        leads = [
            Lead(1, "a@example.com", {"n": 2}),
            Lead(2, "b@example.com", {"n": 0}),
            Lead(3, "c@example.com", {"n": 5}),
        ]
        batch = env.batch(camp, 1)
        batch.leads = leads
        results = await client.send(batch)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert "render failed" in (results[1].error or "")


@pytest.mark.parametrize(
    ("kind", "address"),
    [
        ("sendgrid", "lead3.example.com"),
        ("mailgun", "lead3@example.com, other@example.com"),
        ("postmark", "lead3@example.com, other@example.com"),
    ],
)
async def test_an_address_that_is_not_one_mailbox_fails_only_its_recipient(
    kind: str, address: str, tmp_path: Path
) -> None:
    # written by the host application: SendGrid refused the whole call (every lead failed);
    # Mailgun's `to` and Postmark's `To` read the comma as a second recipient, who got lead 3's
    # email
    async with env.running(kind, tmp_path) as (emulator, client):
        batch = env.batch(env.campaign(), 5)
        batch.leads[2] = Lead(3, address, {"first_name": "N3"})
        results = await client.send(batch)
        lines = await env.record(emulator)
    assert [r.outcome for r in results] == [Outcome.SENT] * 2 + [Outcome.FAILED] + [Outcome.SENT] * 2
    assert results[2].error == "invalid address: not one local@domain mailbox"
    assert sorted(line["lead_id"] for line in lines) == [1, 2, 4, 5]


async def test_smtp_connection_lost_after_data_is_unknown_and_the_rest_retried(tmp_path: Path) -> None:
    async with env.running("smtp", tmp_path) as (emulator, client):
        assert isinstance(emulator, SmtpEmulator)
        emulator.drop_rate = 1.0
        results = await client.send(env.batch(env.campaign(), 4))
        assert results[0].outcome is Outcome.UNKNOWN and "after DATA" in (results[0].error or "")
        assert {r.outcome for r in results[1:]} == {Outcome.RETRY}
        # The server did take the first message: logging it sent or retrying it would be wrong.
        assert [line["lead_id"] for line in await env.record(emulator)] == [1]
        emulator.drop_rate = 0.0
        again = await client.send(env.batch(env.campaign(resend_uncertain=True), 2, first_id=10))
        assert [r.outcome for r in again] == [Outcome.SENT, Outcome.SENT]  # a new connection
        emulator.drop_rate = 1.0
        resend = await client.send(env.batch(env.campaign(resend_uncertain=True), 1, first_id=20))
        assert resend[0].outcome is Outcome.RETRY  # resend_uncertain: the operator's choice


async def test_smtp_message_is_one_mime_message_per_recipient(tmp_path: Path) -> None:
    async with env.running("smtp", tmp_path) as (emulator, client):
        assert isinstance(emulator, SmtpEmulator)
        emulator.kept = []
        camp = env.campaign(reply_to="replies@example.com", headers=(("X-Campaign-Code", "spring-26"),))
        results = await client.send(env.batch(camp, 2))
        assert len(emulator.kept) == 2
    message = email.message_from_bytes(emulator.kept[0], policy=email.policy.default)
    assert message["To"] == "lead1@example.com"
    assert message["Subject"] == "Hi N1<b>"
    assert message["List-Unsubscribe"] == "<https://mailerd.example/u/7-1>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (message["X-Mailerd-Campaign"], message["X-Mailerd-Lead"]) == ("7", "1")
    assert message["Reply-To"] == "replies@example.com" and message["X-Campaign-Code"] == "spring-26"
    assert message["Message-ID"].endswith(".c7.l1@example.com>")
    assert results[0].message_id == message["Message-ID"].strip("<>")
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content().strip() == "Hello N1<b>"
    assert html.get_content().strip() == "<p>Hello N1&lt;b&gt; & co</p>"


async def test_postmark_campaign_with_a_stored_template_uses_batch_with_templates(tmp_path: Path) -> None:
    async with env.running("postmark", tmp_path) as (emulator, client):
        results = await client.send(env.batch(env.campaign(provider_template="spring-welcome"), 3))
        assert [r.outcome for r in results] == [Outcome.SENT] * 3
        assert [line["lead_id"] for line in await env.record(emulator)] == [1, 2, 3]


async def test_sendgrid_large_rendered_content_goes_in_calls_of_its_own(tmp_path: Path) -> None:
    async with env.running("sendgrid", tmp_path) as (emulator, client):
        big = "{% if lead.id > 2 %}" + "x" * 12_000 + "{% endif %}<p>{{ lead.email }}</p>"
        results = await client.send(env.batch(env.campaign(html_body=big), 4))
        assert [r.outcome for r in results] == [Outcome.SENT] * 4
        assert emulator.counters.calls == 3  # leads 1-2 together, 3 and 4 each alone
        assert sorted(line["lead_id"] for line in await env.record(emulator)) == [1, 2, 3, 4]


async def test_sendgrid_values_past_the_substitutions_limit_go_rendered_in_a_call_of_their_own(
    tmp_path: Path,
) -> None:
    # plain variables travel as substitutions: one lead's long value made SendGrid refuse the
    # whole call (400), every lead failed
    async with env.running("sendgrid", tmp_path) as (emulator, client):
        batch = env.batch(env.campaign(), 5)
        batch.leads[1] = Lead(2, "lead2@example.com", {"first_name": "N" * 6_000})  # raw + html
        results = await client.send(batch)
        assert [r.outcome for r in results] == [Outcome.SENT] * 5
        assert emulator.counters.calls == 2  # the four others together, lead 2 alone
        assert sorted(line["lead_id"] for line in await env.record(emulator)) == [1, 2, 3, 4, 5]


async def test_smtp_non_ascii_address_goes_with_smtputf8(tmp_path: Path) -> None:
    async with env.running("smtp", tmp_path) as (emulator, client):
        batch = env.batch(env.campaign(), 2)
        batch.leads[1] = Lead(2, "garcía.josé@example.com", {"first_name": "José"})
        results = await client.send(batch)
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
        assert [line["email"] for line in await env.record(emulator)] == [
            "lead1@example.com",
            "garcía.josé@example.com",
        ]


@pytest.mark.parametrize("kind", env.KINDS)
async def test_sink_command_serves_each_kind_until_sigterm(kind: str, tmp_path: Path) -> None:
    record = tmp_path / "cli.jsonl"
    where = ["--smtp", "127.0.0.1:0"] if kind == "smtp" else ["--api", kind, "--listen", "127.0.0.1:0"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailerd", "sink", *where, "--record", str(record), "--api-key", env.API_KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("sink listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        endpoint = f"127.0.0.1:{port}" if kind == "smtp" else f"http://127.0.0.1:{port}"
        config = dataclasses.replace(env.provider_config(kind, SmtpEmulator()), endpoint=endpoint)
        client = create(config)
        try:
            results = await client.send(env.batch(env.campaign(), 5))
        finally:
            await client.close()
        assert [r.outcome for r in results] == [Outcome.SENT] * 5
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [orjson.loads(raw) for raw in record.read_bytes().splitlines()]
    assert [(line["campaign_id"], line["lead_id"]) for line in lines] == [(7, i) for i in range(1, 6)]


async def test_smtp_a_421_refusal_retries_its_recipient_and_the_rest_go_on(tmp_path: Path) -> None:
    async with env.running("smtp", tmp_path) as (emulator, client):
        assert isinstance(emulator, SmtpEmulator)
        emulator.refuse = lambda address: (
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"
            if address.startswith("lead2@")
            else "550 5.1.1 <lead3@example.com>: Recipient address rejected: User unknown"
            if address.startswith("lead3@")
            else None
        )
        results = await client.send(env.batch(env.campaign(), 4))
        assert [(r.outcome, r.smtp_code) for r in results] == [
            (Outcome.SENT, None),
            (Outcome.RETRY, 421),  # aiosmtplib closed the connection with it
            (Outcome.FAILED, 550),  # on a new connection, at once
            (Outcome.SENT, None),
        ]
        assert results[1].error is not None and results[1].error.startswith("421 4.7.0 [TSS04]")
        assert sorted(line["lead_id"] for line in await env.record(emulator)) == [1, 4]


@pytest.mark.parametrize(
    "address",
    ["jo hn@example.com", "<lead2@example.com>", "Lead Two <lead2@example.com>", "lead\x01two@example.com"],
)
async def test_smtp_an_address_off_the_command_line_fails_only_its_recipient(
    address: str, tmp_path: Path
) -> None:
    # aiosmtplib refuses it (ValueError) after MAIL was accepted, or takes "Name <a@b>" apart
    # and sends to a@b; the host application writes leads too
    async with env.running("smtp", tmp_path) as (emulator, client):
        batch = env.batch(env.campaign(), 3)
        batch.leads[1] = Lead(2, address, {"first_name": "J"})
        results = await client.send(batch)
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
        assert results[1].error is not None and "cannot go on an SMTP command line" in results[1].error
        assert "@" not in results[1].error  # nobody's address in the log row
        assert [line["lead_id"] for line in await env.record(emulator)] == [1, 3]


async def test_smtp_an_address_the_client_cannot_encode_fails_alone_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    # A lone surrogate passes the address check, then fails to encode in RCPT after MAIL was
    # accepted: the transaction is reset and the rest of the batch goes on.
    async with env.running("smtp", tmp_path) as (emulator, client):
        batch = env.batch(env.campaign(), 3)
        batch.leads[1] = Lead(2, "lead\udc802@example.com", {"first_name": "J"})
        results = await client.send(batch)
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
        assert [line["lead_id"] for line in await env.record(emulator)] == [1, 3]


async def test_smtp_pool_closes_a_connection_left_mid_transaction(tmp_path: Path) -> None:
    async with env.running("smtp", tmp_path) as (emulator, _):
        assert isinstance(emulator, SmtpEmulator)
        pool = smtp.SmtpPool(env.provider_config("smtp", emulator, connections=1))
        try:
            with pytest.raises(RuntimeError):
                async with pool.connection() as client:
                    await client.mail("sender@example.com")
                    raise RuntimeError("a bug between MAIL and RSET")
            async with pool.connection() as again:
                assert again is not client and not client.is_connected
                await again.mail("sender@example.com")  # no "503 nested MAIL"
                await again.rset()
        finally:
            await pool.close()


async def test_smtp_an_unexpected_error_keeps_the_batch_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with env.running("smtp", tmp_path) as (emulator, client):
        assert isinstance(client, smtp.SmtpProvider)
        one = client._one

        async def one_with_a_bug(smtp_client: Any, sender: str, recipient: str, mid: str, data: bytes) -> Any:
            if recipient.startswith("lead3@"):
                await smtp_client.mail(sender)
                raise RuntimeError("a bug between MAIL and RSET")
            return await one(smtp_client, sender, recipient, mid, data)

        monkeypatch.setattr(client, "_one", one_with_a_bug)
        results = await client.send(env.batch(env.campaign(), 4))
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT, Outcome.UNKNOWN, Outcome.RETRY]
        assert [line["lead_id"] for line in await env.record(emulator)] == [1, 2]
        monkeypatch.undo()
        again = await client.send(env.batch(env.campaign(), 2, first_id=10))  # a clean connection
        assert [r.outcome for r in again] == [Outcome.SENT, Outcome.SENT]


async def test_smtp_a_sender_address_off_the_command_line_halts(tmp_path: Path) -> None:
    # campaigns refuse it at creation; one stored before that check halts (no lead is failed for it)
    async with env.running("smtp", tmp_path) as (emulator, client):
        with pytest.raises(HaltError, match="the sender address cannot go on an SMTP command line"):
            await client.send(env.batch(env.campaign(from_address="News <news letter@example.com>"), 2))
        results = await client.send(env.batch(env.campaign(), 2, first_id=10))
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
        assert [line["lead_id"] for line in await env.record(emulator)] == [10, 11]
