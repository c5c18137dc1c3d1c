"""An address's domain in its two IDNA spellings."""

from __future__ import annotations

import pytest

from mailerd import idn
from mailerd.providers import compose


@pytest.mark.parametrize(
    ("address", "a_label", "u_label"),
    [
        ("user@bücher.de", "user@xn--bcher-kva.de", "user@bücher.de"),
        ("user@xn--bcher-kva.de", "user@xn--bcher-kva.de", "user@bücher.de"),
        ("user@XN--BCHER-KVA.DE", "user@XN--BCHER-KVA.DE", "user@bücher.de"),
        ("josé@xn--mnchen-3ya.de", "josé@xn--mnchen-3ya.de", "josé@münchen.de"),
        ("plain@example.com", "plain@example.com", "plain@example.com"),
        ("bad@xn--zz.de", "bad@xn--zz.de", "bad@xn--zz.de"),  # no valid punycode: as it is
        ("no-at-sign", "no-at-sign", "no-at-sign"),
    ],
)
def test_the_two_spellings(address: str, a_label: str, u_label: str) -> None:
    assert idn.a_label_address(address) == a_label
    assert idn.u_label_address(address) == u_label


def test_seven_bit_address_is_the_a_label_spelling() -> None:
    # what the providers are sent is what the webhooks read back
    for address in ("user@bücher.de", "bob@straße.de", "plain@example.com"):
        assert compose.seven_bit_address(address) == idn.a_label_address(address)


def test_spellings_and_same_mailbox() -> None:
    assert idn.spellings("ann@bücher.de") == ["ann@bücher.de", "ann@xn--bcher-kva.de"]
    assert idn.spellings("ann@xn--bcher-kva.de") == ["ann@xn--bcher-kva.de", "ann@bücher.de"]
    assert idn.spellings("ann@example.com") == ["ann@example.com"]
    assert idn.same_mailbox("ann@xn--bcher-kva.de", "ann@bücher.de")
    assert idn.same_mailbox("bob@strasse.de", "bob@straße.de")  # IDNA 2003 maps ß to ss
    assert not idn.same_mailbox("ann@xn--bcher-kva.de", "eve@bücher.de")
    assert not idn.same_mailbox("ann@bücher.de", "ann@bucher.de")
