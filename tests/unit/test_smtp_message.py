"""The MIME message of one recipient: parseable, headers safe from injection, non-ASCII encoded."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailerd.models import Lead
from mailerd.providers import compose, smtp_message


def build(
    subject: str, email_address: str = "lead@example.com", html: str = "<p>hé</p>"
) -> email.message.EmailMessage:
    rendered = compose.Rendered(Lead(42, email_address, {}), subject, html, "hé", "https://x.example/u/t")
    mid, data = smtp_message.build(
        rendered,
        campaign_id=7,
        sender="News <news@example.com>",
        headers=[("Reply-To", "r@example.com")],
        domain="example.com",
    )
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Message-ID"] == mid
    assert b"\r\n" in data and b"\n\n" not in data.replace(b"\r\n", b"")
    return message  # type: ignore[return-value]  # message_from_bytes with the default policy


def test_headers_and_parts() -> None:
    message = build("Zoë, " + "long subject " * 100)
    assert message["Subject"] == "Zoë, " + "long subject " * 100
    assert message["X-Mailerd-Lead"] == "42" and message["Reply-To"] == "r@example.com"
    assert message["List-Unsubscribe"] == "<https://x.example/u/t>"
    text, html = message.iter_parts()
    assert (text.get_content(), html.get_content()) == ("hé", "<p>hé</p>")


# a rendered U+2028 (from a lead's data) was cut at for an ASCII recipient, refused for another
@pytest.mark.parametrize(
    "subject", ["Hi\r\nBcc: all@example.com", "Hi\nX-Evil: 1", "Spring\u2028sale", "a\x85b"]
)
def test_a_line_break_in_a_header_value_is_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        build(subject)


def test_a_non_ascii_address_is_written_as_utf8() -> None:
    message = build("Olá", email_address="josé@example.com")
    assert message["To"] == "josé@example.com"
