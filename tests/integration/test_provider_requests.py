"""The requests the SendGrid and Postmark clients send validate against the providers' own
OpenAPI documents (tests/fixtures/openapi), and so do the answers their emulators give; the
per-recipient headers (RFC 8058) and our ids are where each provider expects them."""

from __future__ import annotations

import copy
import email
import email.policy
import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web

from mailerd.emulator.mailgun_api import MailgunEmulator
from mailerd.emulator.postmark_api import PostmarkEmulator
from mailerd.emulator.sendgrid_api import SendgridEmulator
from mailerd.emulator.smtp_server import SmtpEmulator
from mailerd.models import Outcome
from mailerd.providers import create
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
