"""A campaign's Reply-To, extra headers and provider template: stored, handed to the provider,
and never a way to inject a header (issue 9 "from and any address or header a campaign sets";
issue 14 "the campaign's sender, reply-to and headers")."""

from __future__ import annotations

import asyncpg
import pytest

from mailerd import campaigns
from mailerd.db import campaigns as campaigns_db
from mailerd.scheduler import campaign_from_row
from tests.integration.helpers import daemon_config, new_campaign


async def test_reply_to_headers_and_template_reach_the_pipelines_campaign(conn: asyncpg.Connection) -> None:
    new = new_campaign(
        reply_to="Support <help@example.com>",
        headers={"X-Campaign-Tag": "spring", "List-Id": "news.example.com"},
        provider_template="welcome-v2",
    )
    campaign_id = await campaigns.create(conn, new, daemon_config(1, provider={"kind": "postmark"}))
    row = await campaigns_db.get(conn, campaign_id)
    assert row is not None
    campaign = campaign_from_row(row)
    assert campaign.reply_to == "Support <help@example.com>"
    assert campaign.headers == (("List-Id", "news.example.com"), ("X-Campaign-Tag", "spring"))
    assert campaign.provider_template == "welcome-v2"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"reply_to": "a@b.c\r\nBcc: x@y.z"}, "reply_to"),
        ({"reply_to": "a@b.c, d@e.f"}, "reply_to"),
        ({"headers": {"X-Tag": "one\r\nBcc: x@y.z"}}, "headers.X-Tag"),
        ({"headers": {"X-Tag": "a\u2028b"}}, "headers.X-Tag"),
        ({"headers": {"X-Tag": "a\u2029b"}}, "headers.X-Tag"),
        ({"headers": {"X-Tag": "a\x85b"}}, "headers.X-Tag"),
        ({"subject": "Spring\u2028sale"}, "subject"),
        ({"subject": "Spring\x85sale"}, "subject"),
        ({"from_address": "News\u2028Team <news@example.com>"}, "from"),
        ({"reply_to": "Help\u2029Desk <help@example.com>"}, "reply_to"),
        ({"headers": {"Bcc": "x@y.z"}}, "headers.Bcc"),
        ({"headers": {"List-Unsubscribe": "<https://evil>"}}, "headers.List-Unsubscribe"),
        ({"headers": {"X-Mailerd-Lead": "1"}}, "headers.X-Mailerd-Lead"),
        ({"headers": {"Bad Name": "v"}}, "headers.Bad Name"),
        ({"headers": {"X:Colon": "v"}}, "headers.X:Colon"),
    ],
)
def test_no_campaign_field_can_inject_a_header(overrides: dict[str, object], field: str) -> None:
    errors = campaigns.validate(new_campaign(**overrides), daemon_config(1))
    assert [e.field for e in errors] == [field], errors


@pytest.mark.parametrize("kind", ["ses", "sink", "mailgun", "smtp"])
def test_a_provider_template_for_a_kind_that_ignores_it_is_refused(kind: str) -> None:
    # it was stored and ignored: the campaign went out with its own templates
    errors = campaigns.validate(
        new_campaign(provider_template="welcome-v2"), daemon_config(1, provider={"kind": kind})
    )
    assert [e.field for e in errors] == ["provider_template"], errors
    assert f"kind {kind}" in errors[0].message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"headers": {f"X-Tag-{n}": "v" for n in range(14)}}, "headers"),
        ({"headers": {"X-Season": "été " * 150}}, "headers.X-Season"),  # 995 characters, encoded
    ],
)
@pytest.mark.parametrize("kind", ["ses", "sink"])
def test_what_ses_cannot_carry_is_refused_at_creation(
    overrides: dict[str, object], field: str, kind: str
) -> None:
    # accepted, then the campaign failed at its first batch
    errors = campaigns.validate(new_campaign(**overrides), daemon_config(1, provider={"kind": kind}))
    assert [e.field for e in errors] == [field], errors
    assert campaigns.validate(new_campaign(**overrides), daemon_config(1, provider={"kind": "smtp"})) == []
