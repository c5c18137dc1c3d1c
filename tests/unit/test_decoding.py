"""Bodies into Structs: every problem named by its field, in words."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
import pytest

from mailerd import campaigns, decoding
from mailerd import config as config_mod


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=10)]
    name: Annotated[str, msgspec.Meta(max_length=3)]
    html_body: str = msgspec.field(name="html")
    at: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    day: dt.date | None = None


def test_every_problem_is_listed_by_wire_name_in_field_order() -> None:
    with pytest.raises(decoding.Invalid) as raised:
        decoding.decode(Body, {"extra": 1, "count": True, "name": "long", "rate": 0})
    assert [str(problem) for problem in raised.value.problems] == [
        "extra: unknown field",
        "count: expected an integer, got a boolean",
        "name: at most 3 characters",
        "html: is required",
        "rate: must be greater than 0",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 0}, "count: must be from 1 to 10"),
        ({"count": "1"}, "count: expected an integer, got str"),
        ({"at": "tomorrow"}, "at: expected an RFC 3339 time with a zone (e.g. 2026-12-01T09:00:00Z)"),
        ({"at": "2026-12-01T09:00:00"}, "at: needs a time zone (e.g. 2026-12-01T09:00:00Z)"),
        ({"rate": "fast"}, "rate: expected a number, got str"),
        # a day, not a time: the message asks for what the field takes
        ({"day": "2026-01-01T00:00:00Z"}, "day: expected a day, YYYY-MM-DD (e.g. 2026-12-01)"),
        ({"day": "2026-02-30"}, "day: expected a day, YYYY-MM-DD (e.g. 2026-12-01)"),
    ],
)
def test_messages_say_what_was_expected(data: dict[str, Any], message: str) -> None:
    body = {"count": 1, "name": "abc", "html": "<p>", **data}
    with pytest.raises(decoding.Invalid) as raised:
        decoding.decode(Body, body)
    assert str(raised.value.problems[0]) == message


def test_null_counts_as_absent_and_python_names_are_kept() -> None:
    body = decoding.decode(Body, {"count": 2, "name": "ab", "html": "<p>", "at": None, "rate": 3})
    assert body == Body(count=2, name="ab", html_body="<p>", rate=3.0)


def test_a_campaign_built_in_code_is_checked_like_a_decoded_one() -> None:
    config = config_mod.from_mapping(
        {"providers": {"sink": {"kind": "sink", "endpoint": "http://x"}}}, env={}
    )
    new = campaigns.NewCampaign(
        account_id=-1,
        name="n",
        segment={"field": "email", "op": "exists"},
        subject="s",
        html_body="h",
        text_body="t",
        from_address="news@example.com",
        provider="sink",
        send_at=dt.datetime(2026, 12, 1, 9),  # naive on purpose
        rate_per_s=0,
    )
    assert {error.field for error in campaigns.validate(new, config)} == {"account_id", "send_at", "rate"}


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (decoding.ONE_LINE, "Hi\n"),
        (decoding.ONE_LINE, "Hi\r"),
        (decoding.ONE_LINE, "Hi\u2028"),
        (decoding.ONE_LINE, "Hi\u2029"),
        (decoding.ONE_LINE, "Hi\x85"),
        (decoding.ONE_LINE, "Hi\x0b"),
        (decoding.ONE_LINE, "Hi\x1e"),
        (decoding.NO_CONTROL, "a@b.c\u2028"),
        (decoding.NO_CONTROL, "a@b.c\x85"),
        (decoding.NO_CONTROL, "a@b.c\n"),
        (decoding.NO_CONTROL, "a@b.c\t"),
        (decoding.NO_NUL, "a\x00\n"),
    ],
)
def test_patterns_refuse_a_line_break_at_the_very_end(pattern: str, text: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(text, Annotated[str, msgspec.Meta(pattern=pattern)])
    assert msgspec.convert("fine text", Annotated[str, msgspec.Meta(pattern=pattern)]) == "fine text"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("news@example.com", True),
        ("News <news@example.com>", True),
        ('"Doe, Jo" <jo@example.com>', True),
        ("=?utf-8?q?N=C3=A9?= <news@example.com>", True),
        ("news@example.com\n", False),
        ("a@b.c\r\nBcc: x@y.z", False),
        ("a@example.com, b@example.com", False),
        ("list: a@example.com;", False),
        ("news@", False),
        ("", False),
    ],
)
def test_from_is_one_mailbox(value: str, ok: bool) -> None:
    assert campaigns.is_one_address(value) is ok


def test_an_unknown_value_in_a_list_names_the_choices() -> None:
    # a send window's day listed "(one of: )": the choices of the list's items were not looked at
    with pytest.raises(decoding.Invalid) as raised:
        decoding.decode(campaigns.SendWindowBody, {"start": "09:00", "end": "17:00", "days": ["funday"]})
    assert "(one of: mon, tue, wed, thu, fri, sat, sun)" in str(raised.value.problems[0])
