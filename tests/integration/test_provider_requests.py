"""The requests the SendGrid and Postmark clients send validate against the providers' own
OpenAPI documents (tests/fixtures/openapi), and so do the answers their emulators give; the
per-recipient headers (RFC 8058) and our ids are where each provider expects them. SES requests
validate against botocore's sesv2 service model and carry the campaign's reply-to and headers
in 7-bit, as SES takes them; the SMTP client writes display names RFC 2047 encoded."""

from __future__ import annotations

import copy
import email
import email.policy
import json
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate
import jsonschema
import orjson
import pytest
from aiohttp import web

from mailerd.config import ProviderConfig
from mailerd.emulator.mailgun_api import MailgunEmulator
from mailerd.emulator.postmark_api import PostmarkEmulator
from mailerd.emulator.sendgrid_api import SendgridEmulator
from mailerd.emulator.ses_api import SesEmulator
from mailerd.emulator.smtp_server import SmtpEmulator
from mailerd.models import Batch, CampaignBroken, Lead, Outcome, PermanentError
from mailerd.providers import create, ses
from tests.integration import providers_env as env

OPENAPI = Path(__file__).parent.parent / "fixtures" / "openapi"
SENDGRID = json.loads((OPENAPI / "sendgrid-mail-send.json").read_text(encoding="utf-8"))
POSTMARK = json.loads((OPENAPI / "postmark-batch.json").read_text(encoding="utf-8"))


class SendgridCapture(SendgridEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies: list[Any] = []
        self.answers: list[tuple[int, bytes]] = []

    async def _mail_send(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        response = await super()._mail_send(request)
        self.answers.append((response.status, bytes(response.body or b"")))  # type: ignore[arg-type]
        return response


class PostmarkCapture(PostmarkEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies: list[tuple[str, Any]] = []
        self.answers: list[tuple[int, Any]] = []

    async def _handle(self, request: web.Request, *, templated: bool) -> web.Response:
        self.bodies.append((request.path, orjson.loads(await request.read())))
        response = await super()._handle(request, templated=templated)
        self.answers.append((response.status, orjson.loads(bytes(response.body))))  # type: ignore[arg-type]
        return response


class MailgunCapture(MailgunEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.forms: list[list[tuple[str, str]]] = []

    async def _messages(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.forms.append([(key, str(value)) for key, value in form.items()])
        return await super()._messages(request)


def nullable(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still used in SendGrid's 3.1 document) as JSON Schema."""
    if isinstance(schema, list):
        return [nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: nullable(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    return out


def sendgrid_validator(body: dict[str, Any]) -> jsonschema.protocols.Validator:
    schema = copy.deepcopy(SENDGRID["request"])
    if "template_id" in body:  # the document's gap: a template needs no subject or content
        schema["required"] = [key for key in schema["required"] if key not in ("subject", "content")]
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def postmark_validator(name: str, messages: list[dict[str, Any]]) -> jsonschema.protocols.Validator:
    schema = copy.deepcopy(POSTMARK["schemas"][name])
    if name == "SendEmailTemplatedBatchRequest":  # the document's gap: one of the two is required
        item = schema["properties"]["Messages"]["items"]
        sent = {key for message in messages for key in message}
        item["required"] = [
            key for key in item["required"] if key in sent or key not in ("TemplateId", "TemplateAlias")
        ]
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


async def _send(emulator: Any, kind: str, **campaign: Any) -> list[Outcome]:
    async with emulator:
        client = create(env.provider_config(kind, emulator), unsubscribe=env.unsubscribe_url)
        try:
            results = await client.send(env.batch(env.campaign(**campaign), 3))
        finally:
            await client.close()
    return [r.outcome for r in results]


@pytest.mark.parametrize(
    "campaign",
    [
        {},  # plain variables: substitutions
        {"html_body": "{% if lead.id > 1 %}<b>{{ lead.email }}</b>{% endif %}"},  # rendered here
        {"reply_to": "Replies <r@example.com>", "headers": (("X-Code", "s26"),)},
        {"provider_template": "d-0123456789abcdef"},
    ],
)
async def test_sendgrid_requests_match_the_openapi_document(campaign: dict[str, Any], tmp_path: Path) -> None:
    emulator = SendgridCapture(api_key=env.API_KEY)
    assert await _send(emulator, "sendgrid", **campaign) == [Outcome.SENT] * 3
    (body,) = emulator.bodies
    sendgrid_validator(body).validate(body)
    for index, personalization in enumerate(body["personalizations"], start=1):
        assert personalization["custom_args"] == {"mailerd_campaign": "7", "mailerd_lead": str(index)}
        assert personalization["headers"] == {
            "List-Unsubscribe": f"<https://mailerd.example/u/7-{index}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    assert body["from"] == {"email": "news@example.com", "name": "News"}


async def test_sendgrid_error_answers_match_the_openapi_document() -> None:
    emulator = SendgridCapture(api_key="another-key")
    async with emulator:
        client = create(env.provider_config("sendgrid", emulator), unsubscribe=env.unsubscribe_url)
        try:
            with pytest.raises(Exception, match="401"):
                await client.send(env.batch(env.campaign(), 1))
        finally:
            await client.close()
    status, raw = emulator.answers[0]
    assert status == 401
    jsonschema.Draft202012Validator(nullable(SENDGRID["error"])).validate(orjson.loads(raw))


@pytest.mark.parametrize(
    ("campaign", "operation"),
    [
        ({}, "/email/batch"),
        ({"reply_to": "r@example.com", "headers": (("X-Code", "s26"),)}, "/email/batch"),
        ({"provider_template": "spring-welcome"}, "/email/batchWithTemplates"),
        ({"provider_template": "4242"}, "/email/batchWithTemplates"),
    ],
)
async def test_postmark_requests_and_answers_match_the_openapi_document(
    campaign: dict[str, Any], operation: str, tmp_path: Path
) -> None:
    emulator = PostmarkCapture(api_key=env.API_KEY)
    assert await _send(emulator, "postmark", **campaign) == [Outcome.SENT] * 3
    ((path, body),) = emulator.bodies
    assert path == operation
    name = POSTMARK["operations"][operation]
    messages = body["Messages"] if isinstance(body, dict) else body
    postmark_validator(name, messages).validate(body)
    for index, message in enumerate(messages, start=1):
        assert message["Metadata"] == {"mailerd_campaign": "7", "mailerd_lead": str(index)}
        assert message["MessageStream"] == "broadcast"
        assert {"Name": "List-Unsubscribe", "Value": f"<https://mailerd.example/u/7-{index}>"} in message[
            "Headers"
        ]
        assert {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"} in message["Headers"]
    ((status, answer),) = emulator.answers
    assert status == 200
    jsonschema.Draft4Validator(POSTMARK["schemas"]["SendEmailBatchResponse"]).validate(answer)


async def test_mailgun_form_carries_recipient_variables_ids_and_headers() -> None:
    emulator = MailgunCapture(api_key=env.API_KEY)
    assert await _send(emulator, "mailgun", reply_to="r@example.com") == [Outcome.SENT] * 3
    (form,) = emulator.forms
    fields = dict(form)
    assert [value for key, value in form if key == "to"] == [f"lead{i}@example.com" for i in (1, 2, 3)]
    variables = orjson.loads(fields["recipient-variables"])
    assert variables["lead2@example.com"]["mailerd_lead"] == "2"
    assert variables["lead2@example.com"]["mailerd_unsubscribe"] == "https://mailerd.example/u/7-2"
    assert variables["lead2@example.com"]["lead_attributes_first_name__html"] == "N2&lt;b&gt;"
    assert fields["v:mailerd_campaign"] == "7" and fields["v:mailerd_lead"] == "%recipient.mailerd_lead%"
    assert fields["h:List-Unsubscribe"] == "<%recipient.mailerd_unsubscribe%>"
    assert fields["h:List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert fields["h:Reply-To"] == "r@example.com" and fields["o:tag"] == "mailerd-campaign-7"
    assert fields["html"] == "<p>Hello %recipient.lead_attributes_first_name__html% & co</p>"


@pytest.mark.parametrize(
    ("campaign", "field", "expected"),
    [
        ({"from_address": "Jürgen Müller <news@example.com>"}, "From", ("Jürgen Müller", "news@example.com")),
        (
            {"from_address": "news@example.com", "reply_to": "Zoë Support <help@example.com>"},
            "Reply-To",
            ("Zoë Support", "help@example.com"),
        ),
        (
            {"reply_to": '"Zoë, the (boss)" <help@example.com>'},
            "Reply-To",
            ("Zoë, the (boss)", "help@example.com"),
        ),
        ({"from_address": "Bücher <news@bücher.de>"}, "From", ("Bücher", "news@xn--bcher-kva.de")),
    ],
)
async def test_smtp_display_names_are_encoded_alone_and_the_message_is_7bit(
    campaign: dict[str, Any], field: str, expected: tuple[str, str]
) -> None:
    # The whole Reply-To was one RFC 2047 word (replies went nowhere) and a From display name
    # went as raw UTF-8 without SMTPUTF8 (UndecodableBytesDefect at the receiver). A server
    # without SMTPUTF8 takes these: no address needs it.
    emulator = SmtpEmulator(api_key=env.API_KEY)
    emulator.smtputf8, emulator.kept = False, []
    assert await _send(emulator, "smtp", **campaign) == [Outcome.SENT] * 3
    for raw in emulator.kept:
        assert raw.isascii()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        header = message[field]
        assert [(a.display_name, a.addr_spec) for a in header.addresses] == [expected]
        assert not header.defects
        assert f"<{expected[1]}>".encode() in raw.split(b"\r\n\r\n", 1)[0]


async def test_smtp_a_mailbox_whose_local_part_is_not_ascii_goes_only_with_smtputf8() -> None:
    emulator = SmtpEmulator(api_key=env.API_KEY)
    emulator.smtputf8 = False
    refused = await _send(emulator, "smtp", reply_to="Zoë <josé@example.com>")
    assert refused == [Outcome.FAILED] * 3  # never written as an RFC 2047 word, nor as 8-bit without it
    emulator = SmtpEmulator(api_key=env.API_KEY)
    emulator.kept = []
    assert await _send(emulator, "smtp", reply_to="Zoë <josé@example.com>") == [Outcome.SENT] * 3
    # RFC 6532: UTF-8 header values (the email package reads bytes' headers as ASCII)
    message = email.message_from_string(emulator.kept[0].decode(), policy=email.policy.default)
    reply_to = message["Reply-To"].addresses
    assert [(a.display_name, a.addr_spec) for a in reply_to] == [("Zoë", "josé@example.com")]


async def test_smtp_a_leads_idn_domain_goes_in_a_labels_without_smtputf8() -> None:
    # the lead's Unicode domain made the message UTF-8: a server without SMTPUTF8 failed it
    emulator = SmtpEmulator(api_key=env.API_KEY)
    emulator.smtputf8 = False
    emulator.kept = []
    leads = [Lead(1, "anna@bücher.de", {})]
    async with emulator:
        client = create(env.provider_config("smtp", emulator), unsubscribe=env.unsubscribe_url)
        try:
            results = await client.send(
                Batch(campaign=env.campaign(), shard_no=0, seq=0, leads=leads, upto=1)
            )
        finally:
            await client.close()
    assert [r.outcome for r in results] == [Outcome.SENT]
    message = email.message_from_bytes(emulator.kept[0], policy=email.policy.default)
    assert message["To"] == "anna@xn--bcher-kva.de"


class SesCapture(SesEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies: list[Any] = []
        self.kept = []

    async def _send_bulk_email(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        return await super()._send_bulk_email(request)


def _ses_client(emulator: SesEmulator) -> ses.SesProvider:
    return ses.SesProvider(
        ProviderConfig(name="sink", kind="sink", endpoint=emulator.url), unsubscribe=env.unsubscribe_url
    )


async def test_ses_request_carries_reply_to_and_headers_as_ses_takes_them() -> None:
    # They were dropped: the request had only FromEmailAddress, DefaultContent, BulkEmailEntries.
    campaign = env.campaign(
        provider="sink",
        from_address="Jürgen Müller <news@bücher.de>",
        reply_to="Zoë Support <help@example.com>",
        headers=(("X-Campaign-Ref", "spring-2030"), ("X-Season", "Frühling")),
    )
    async with SesCapture() as emulator:
        client = _ses_client(emulator)
        try:
            results = await client.send(env.batch(campaign, 3))
        finally:
            await client.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    (body,) = emulator.bodies
    operation = botocore.session.get_session().get_service_model("sesv2").operation_model("SendBulkEmail")
    report = botocore.validate.ParamValidator().validate(body, operation.input_shape)
    assert not report.has_errors(), report.generate_report()
    assert body["FromEmailAddress"] == "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <news@xn--bcher-kva.de>"
    assert body["ReplyToAddresses"] == ["=?utf-8?q?Zo=C3=AB?= Support <help@example.com>"]
    assert emulator.kept is not None and len(emulator.kept) == 3
    for index, fields in enumerate(emulator.kept, start=1):
        message = email.message_from_string(
            "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n", policy=email.policy.default
        )
        assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
            ("Jürgen Müller", "news@xn--bcher-kva.de")
        ]
        assert [(a.display_name, a.addr_spec) for a in message["Reply-To"].addresses] == [
            ("Zoë Support", "help@example.com")
        ]
        assert (message["X-Campaign-Ref"], message["X-Season"]) == ("spring-2030", "Frühling")
        assert message["List-Unsubscribe"] == f"<https://mailerd.example/u/7-{index}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_ses_takes_a_leads_idn_domain_in_punycode_and_fails_only_a_local_part_it_cannot_carry() -> None:
    # sent as stored: SES refuses an address that is not 7-bit, so one such lead failed its
    # whole call of 50
    leads = [Lead(1, "anna@bücher.de", {}), Lead(2, "jürgen@example.com", {}), Lead(3, "b@example.com", {})]
    campaign = env.campaign(provider="sink")
    async with SesCapture() as emulator:
        client = _ses_client(emulator)
        try:
            results = await client.send(Batch(campaign=campaign, shard_no=0, seq=0, leads=leads, upto=3))
        finally:
            await client.close()
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert "SMTPUTF8" in (results[1].error or "")
    (body,) = emulator.bodies
    sent_to = [entry["Destination"]["ToAddresses"] for entry in body["BulkEmailEntries"]]
    assert sent_to == [["anna@xn--bcher-kva.de"], ["b@example.com"]]


@pytest.mark.parametrize(
    ("campaign", "field"),
    [
        ({"headers": tuple((f"X-H{i}", "v") for i in range(14))}, "headers"),  # 14 + the unsubscribe pair
        ({"headers": (("X-Long", "é" * 400),)}, "headers.X-Long"),  # RFC 2047 encoded: past 995
        ({"headers": (("X-Empty", ""),)}, "headers.X-Empty"),  # SES: a value of at least 1
        ({"reply_to": "Zoë <josé@example.com>"}, "reply_to"),  # SES does not support SMTPUTF8
        ({"from_address": "josé@example.com"}, "from"),
    ],
)
async def test_ses_campaign_it_cannot_carry_is_broken_not_sent_without(
    campaign: dict[str, Any], field: str
) -> None:
    async with SesCapture() as emulator:
        client = _ses_client(emulator)
        try:
            with pytest.raises(CampaignBroken, match=rf"^SES cannot send this campaign: {field}: "):
                await client.send(env.batch(env.campaign(provider="sink", **campaign), 3))
        finally:
            await client.close()
    assert emulator.bodies == []


async def test_ses_emulator_refuses_what_ses_refuses() -> None:
    async with SesCapture() as emulator:
        client = _ses_client(emulator)
        try:
            await client.prepare(env.campaign(provider="sink"))
            request = {
                "FromEmailAddress": "news@example.com",
                "DefaultContent": {"Template": {"TemplateName": "mailerd-campaign-7", "TemplateData": "{}"}},
                "BulkEmailEntries": [{"Destination": {"ToAddresses": ["lead@example.com"]}}],
            }
            bad: list[tuple[dict[str, Any], str]] = [
                ({"FromEmailAddress": "Jürgen <news@example.com>"}, "FromEmailAddress"),
                ({"ReplyToAddresses": ["r@bücher.de"]}, "ReplyToAddresses"),
                (
                    {"DefaultContent": {"Template": {"TemplateName": "mailerd-campaign-7", "Headers": [
                        {"Name": "X-Season", "Value": "Frühling"}
                    ]}}},
                    r"DefaultContent\.Template\.Headers",
                ),
                (
                    {"BulkEmailEntries": [{
                        "Destination": {"ToAddresses": ["lead@example.com"]},
                        "ReplacementHeaders": [{"Name": "X:Colon", "Value": "v"}],
                    }]},
                    r"BulkEmailEntries\[0\]\.ReplacementHeaders",
                ),
            ]  # fmt: skip
            for change, field in bad:
                with pytest.raises(PermanentError, match=rf"^BadRequestException: {field}: "):
                    await client._call("POST", ses.SEND_BULK_PATH, {**request, **change})
        finally:
            await client.close()
