"""An address's domain in its two IDNA spellings. Pure: no I/O.

A lead's Unicode domain (``user@bücher.de``, the U-label form leads are typed and stored in)
goes to SES and to SMTP servers in A-labels (``user@xn--bcher-kva.de``), and their bounces,
complaints and unsubscribes name it that way. :func:`u_label_address` reads such an address back
in the leads' form; :func:`same_mailbox` tells whether two spellings are one address (also where
IDNA 2003 maps a domain without an ``xn--`` label: ``straße.de`` goes out as ``strasse.de``).
"""

from __future__ import annotations

import unicodedata

_ACE_PREFIX = "xn--"


def a_label_address(address: str) -> str:
    """The address with its domain in IDNA A-labels (``bücher.de`` -> ``xn--bcher-kva.de``), as
    mailerd sends it; as it is when the domain is ASCII already or no valid IDN."""
    local, at, domain = address.rpartition("@")
    if address.isascii() or not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"  # IDNA 2003, the standard codec
    except UnicodeError:
        return address


def u_label_address(address: str) -> str:
    """The address with its domain's A-labels decoded (``xn--bcher-kva.de`` -> ``bücher.de``,
    NFC), the form a typed lead has; as it is when the domain has none or is no valid IDN."""
    local, at, domain = address.rpartition("@")
    if not at or _ACE_PREFIX not in domain.lower() or not domain.isascii():
        return address
    try:
        decoded = domain.lower().encode("ascii").decode("idna")
    except UnicodeError:
        return address
    return f"{local}@{unicodedata.normalize('NFC', decoded)}"


def spellings(address: str) -> list[str]:
    """The address as given and in its other IDNA spelling (one entry when the domain is plain
    ASCII): what a lookup by address must try."""
    found = [address]
    for other in (u_label_address(address), a_label_address(address)):
        if other not in found:
            found.append(other)
    return found


def same_mailbox(first: str, second: str) -> bool:
    """Whether two lower-cased addresses are one, their domains compared in A-labels (the local
    parts as they are)."""
    if first == second:
        return True
    first_local, _, first_domain = a_label_address(first).rpartition("@")
    second_local, _, second_domain = a_label_address(second).rpartition("@")
    return first_local == second_local and first_domain.lower() == second_domain.lower()
