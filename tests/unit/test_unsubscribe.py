"""One-click unsubscribe tokens: round trips, forgeries, alterations, and the URL builder."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailerd import unsubscribe
from mailerd.models import Campaign, CampaignStatus, Lead

SECRET = b"0123456789abcdef0123456789abcdef"
ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _campaign(campaign_id: int = 12, account_id: int = 3) -> Campaign:
    return Campaign(
        campaign_id, account_id, "c", CampaignStatus.RUNNING, None, "f@example.com", "s", "h", "t", "sink"
    )


@given(ids, ids, ids)
def test_tokens_round_trip(account_id: int, campaign_id: int, lead_id: int) -> None:
    token = unsubscribe.make_token(SECRET, account_id, campaign_id, lead_id)
    assert len(token) == unsubscribe.TOKEN_CHARS
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert unsubscribe.read_token(SECRET, token) == (account_id, campaign_id, lead_id, None)


addresses = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
    lambda a: len(a.encode()) <= unsubscribe.MAX_ADDRESS_BYTES
)


@given(ids, ids, ids, addresses)
def test_tokens_with_the_address_round_trip(
    account_id: int, campaign_id: int, lead_id: int, email: str
) -> None:
    # the address a deleted or erased lead had: what the unsubscribe suppresses
    token = unsubscribe.make_token(SECRET, account_id, campaign_id, lead_id, email)
    assert unsubscribe.TOKEN_CHARS < len(token) <= unsubscribe.MAX_TOKEN_CHARS
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert unsubscribe.read_token(SECRET, token) == (account_id, campaign_id, lead_id, email)


def test_token_carries_no_readable_address_and_no_readable_ids() -> None:
    address = "ada.lovelace@example.com"
    for email in (None, address):
        token = unsubscribe.make_token(SECRET, 3, 12, 123456, email)
        assert "@" not in token and "123456" not in token
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert b"ada" not in raw and b"example" not in raw
    # Sealed, not encoded: another key reads nothing of it, another campaign's token differs.
    sealed = unsubscribe.make_token(SECRET, 3, 12, 123456, address)
    assert sealed != unsubscribe.make_token(SECRET, 3, 13, 123456, address)
    with pytest.raises(unsubscribe.BadToken, match="signature"):
        unsubscribe.read_token(b"another secret", sealed)


def test_an_address_too_long_to_carry_makes_a_token_without_it() -> None:
    longest = "a" * (unsubscribe.MAX_ADDRESS_BYTES - len("@example.com")) + "@example.com"
    token = unsubscribe.make_token(SECRET, 3, 12, 34, longest)
    assert len(token) == unsubscribe.MAX_TOKEN_CHARS
    assert unsubscribe.read_token(SECRET, token).email == longest
    over = "é" + longest[1:]  # 254 characters, 255 bytes in UTF-8
    assert unsubscribe.read_token(SECRET, unsubscribe.make_token(SECRET, 3, 12, 34, over)).email is None


@given(ids, ids, ids, st.sampled_from([None, "ada@example.com", "zoë@bücher.de"]), st.data())
def test_any_altered_character_is_refused(
    account_id: int, campaign_id: int, lead_id: int, email: str | None, data: st.DataObject
) -> None:
    token = unsubscribe.make_token(SECRET, account_id, campaign_id, lead_id, email)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.")
    )
    altered = token[:position] + replacement + token[position + 1 :]
    if altered == token:
        return
    with pytest.raises(unsubscribe.BadToken):
        unsubscribe.read_token(SECRET, altered)


def test_forged_tokens_are_refused() -> None:
    token = unsubscribe.make_token(SECRET, 3, 12, 34)
    # The right layout signed with another key.
    with pytest.raises(unsubscribe.BadToken, match="signature"):
        unsubscribe.read_token(b"another secret", token)
    # Someone else's lead id with the original MAC.
    raw = bytearray(base64.urlsafe_b64decode(token + "="))
    raw[24] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(unsubscribe.BadToken, match="signature"):
        unsubscribe.read_token(SECRET, forged)
    # The same with the address: its ids are authenticated with it.
    raw = bytearray(base64.urlsafe_b64decode(unsubscribe.make_token(SECRET, 3, 12, 34, "a@b.c") + "=="))
    raw[24] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(unsubscribe.BadToken, match="signature"):
        unsubscribe.read_token(SECRET, forged)


@pytest.mark.parametrize(
    "garbage",
    ["", "x", "%00", "é" * unsubscribe.TOKEN_CHARS, "A" * unsubscribe.TOKEN_CHARS, "A" * 500, "../../etc"],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(unsubscribe.BadToken):
        unsubscribe.read_token(SECRET, garbage)


def test_truncated_extended_and_padded_tokens_are_refused() -> None:
    token = unsubscribe.make_token(SECRET, 3, 12, 34)
    for variant in (token[:-1], token + "A", token + "=", " " + token[1:], token[:-1] + "\n"):
        with pytest.raises(unsubscribe.BadToken):
            unsubscribe.read_token(SECRET, variant)


def test_the_spare_bits_of_the_last_character_do_not_make_a_second_spelling() -> None:
    token = unsubscribe.make_token(SECRET, 3, 12, 34)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(token[-1])
    # 41 bytes -> 55 characters: the last one carries 2 data bits and 4 spare bits.
    siblings = [c for i, c in enumerate(alphabet) if i >> 4 == index >> 4 and c != token[-1]]
    assert siblings
    for sibling in siblings:
        with pytest.raises(unsubscribe.BadToken):
            unsubscribe.read_token(SECRET, token[:-1] + sibling)


def test_empty_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        unsubscribe.make_token(b"", 1, 2, 3)
    with pytest.raises(ValueError, match="empty"):
        unsubscribe.url_builder(b"", "https://example.com")


@pytest.mark.parametrize("secret", [SECRET, b"k", b"x" * 64, b"y" * 65, b"z" * 200])
def test_url_builder_makes_the_same_tokens_for_any_key_length(secret: bytes) -> None:
    build = unsubscribe.url_builder(secret, "https://mail.example.com/")
    url = build(_campaign(), Lead(987654321, "ada@example.com", {}))
    token = unsubscribe.make_token(secret, 3, 12, 987654321, "ada@example.com")
    assert url == "https://mail.example.com/u/" + token
    assert unsubscribe.read_token(secret, token) == (3, 12, 987654321, "ada@example.com")
    # an address too long to carry: the token without it
    long = Lead(5, "a" * 250 + "@example.com", {})
    url = build(_campaign(), long)
    assert url == "https://mail.example.com/u/" + unsubscribe.make_token(secret, 3, 12, 5)


def test_url_builder_is_fast() -> None:
    build = unsubscribe.url_builder(SECRET, "https://mail.example.com")
    campaign = _campaign()
    lead = Lead(1, "ada@example.com", {})
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        build(campaign, lead)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per URL"  # about 5 µs here (sealed); generous


def test_one_click_field() -> None:
    assert unsubscribe.is_one_click({"List-Unsubscribe": "One-Click"})
    assert not unsubscribe.is_one_click({"List-Unsubscribe": "one-click-ish"})
    assert not unsubscribe.is_one_click({})


def test_pages() -> None:
    page = unsubscribe.confirm_page()
    assert '<form method="post">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "unsubscribed" in unsubscribe.done_page()
    assert "not valid" in unsubscribe.invalid_page()
