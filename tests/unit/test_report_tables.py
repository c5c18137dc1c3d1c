"""The report commands' tables and the usage range (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from mailerd.commands import arguments
from mailerd.commands.reports import table
from mailerd.commands.terminal import printable
from mailerd.http.errors import ApiError
from mailerd.http.reports import usage_range


def test_a_table_aligns_numbers_right_and_formats_them() -> None:
    text = table(["domain", "sent", "rate"], [["example.com", 12345, 0.125], ["b.org", 7, None]])
    assert text.splitlines() == [
        "domain         sent    rate",
        "-----------  ------  ------",
        "example.com  12,345  12.50%",
        "b.org             7",
    ]


def test_the_usage_range_defaults_to_the_last_30_days_and_refuses_bad_ones() -> None:
    today = dt.date(2026, 3, 31)
    assert usage_range(None, None, today) == (dt.date(2026, 3, 2), today)
    assert usage_range(dt.date(2026, 1, 1), None, today) == (dt.date(2026, 1, 1), today)
    with pytest.raises(ApiError) as refused:
        usage_range(dt.date(2026, 4, 1), dt.date(2026, 3, 1), today)
    assert refused.value.status == 422 and refused.value.body.error.field == "from"
    with pytest.raises(ApiError):
        usage_range(dt.date(2000, 1, 1), today, today)


def test_the_default_from_of_a_usage_range_stops_at_the_first_day() -> None:
    # to - 29 days would be before year 1: an OverflowError (a 500) before.
    first = dt.date(1, 1, 1)
    assert usage_range(None, dt.date(1, 1, 5), dt.date(2026, 3, 31)) == (first, dt.date(1, 1, 5))
    assert usage_range(None, dt.date(1, 1, 30), dt.date(2026, 3, 31)) == (first, dt.date(1, 1, 30))
    assert usage_range(None, dt.date(1, 1, 31), dt.date(2026, 3, 31))[0] == dt.date(1, 1, 2)


def test_text_from_outside_cannot_drive_the_terminal() -> None:
    # a provider's reason set the window title, cleared the screen and forged a row
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE\nsent 0\r\u2028"
    text = table(["what", "reason"], [["bounce", evil]])
    assert len(text.splitlines()) == 3
    assert not any(ord(char) < 0x20 and char != "\n" for char in text)
    assert text.splitlines()[2].endswith(r"\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE\nsent 0\r\u2028")
    assert printable("Zoë <a@b.c>") == "Zoë <a@b.c>"


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_report_lead_wants_a_positive_limit(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    # -1 printed every entry but the last, 0 printed nothing, both with exit status 0
    with pytest.raises(SystemExit) as exited:
        arguments.parser().parse_args(["report", "lead", "--account", "1", "--lead", "1", "--limit", limit])
    assert exited.value.code == 2 and "expected 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--listen", "--smtp"])
def test_sink_addresses_are_checked_as_arguments(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    # "listen: expected HOST:PORT" was printed once the command ran, with exit status 1
    with pytest.raises(SystemExit) as exited:
        arguments.parser().parse_args(["sink", option, "nonsense"])
    assert exited.value.code == 2
    assert f"argument {option}: expected HOST:PORT, got 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["campaign", "show", "0"], "argument id: expected 1 to 9223372036854775807, got 0"),
        (["campaign", "cancel", "-3"], "argument id: expected 1 to 9223372036854775807, got -3"),
        (["report", "campaign", "9" * 20], "argument id: expected 1 to 9223372036854775807"),
        (["report", "campaign", "1", "--top", "0"], "argument --top: must be from 1 to 100, got 0"),
        # a demo of no leads (or -5) seeded nothing and ran a campaign of nothing
        (["demo", "--leads", "0"], "argument --leads: must be from 1 to 10000000, got 0"),
        (["demo", "--leads", "-5"], "argument --leads: must be from 1 to 10000000, got -5"),
    ],
)
def test_campaign_ids_and_top_are_checked_as_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # an id no campaign can have reached the API (404, exit 1), unlike relay replay --campaign (2)
    with pytest.raises(SystemExit) as exited:
        arguments.parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
