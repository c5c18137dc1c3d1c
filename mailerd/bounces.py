"""Bounce classification: why a bounce happened, so only a bad address is suppressed.

Pure: no I/O. :func:`classify` reads what a provider's webhook carries (our event kind, the
provider's bounce type, the SMTP enhanced status code, the diagnostic text) and answers one of a
small fixed set of classes (the table is in docs/webhooks.md#bounce-classes):

- ``invalid_recipient``: the mailbox or domain does not exist (x.1.x but x.1.7 and x.1.8, which
  name the sender; "user unknown"; a provider suppression list of bounced addresses). The only
  bounce that suppresses an address at once.
- ``mailbox_full``: x.2.2, over quota: the address is good; repeated, the soft-bounce limit acts.
- ``policy_block``: the receiver refused this message (x.7.1 without more, spam or content
  filters, message too large).
- ``reputation_block``: the receiver refused the sender (block lists such as Spamhaus, rate
  limits, "unusual rate", x.7.28, a provider's "blocked").
- ``auth_failure``: the sender's identity was refused: SPF, DKIM or DMARC did not pass (Gmail's
  5.7.26 "unauthenticated", x.7.2x), or the sender address itself (x.1.7, x.1.8, "Sender address
  rejected", "Domain of sender address ... does not exist": a return-path domain that does not
  resolve). The recipient is fine.
- ``transient``: anything temporary (4.x.x, soft bounces with nothing more specific).
- ``unknown``: a permanent bounce nothing explains.

The three blocks are the sender's problem, not the address's: they never suppress (even when a
provider reports them as permanent, as Gmail's 5.7.26 is) and count toward a campaign's
``blocked`` rate instead (:data:`BLOCKING`).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from mailerd.models import EventKind


class BounceClass(enum.StrEnum):
    """Why a bounce happened (stored in ``email_events.bounce_class``)."""

    INVALID_RECIPIENT = "invalid_recipient"
    MAILBOX_FULL = "mailbox_full"
    POLICY_BLOCK = "policy_block"
    REPUTATION_BLOCK = "reputation_block"
    AUTH_FAILURE = "auth_failure"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"


BLOCKING: Final = frozenset(
    {BounceClass.POLICY_BLOCK, BounceClass.REPUTATION_BLOCK, BounceClass.AUTH_FAILURE}
)
BOUNCE_KINDS: Final = frozenset({EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE})

# The provider's own verdict when it is definitive: its suppression list of bounced addresses,
# "no such address". Keys are lower-cased ``provider/provider_type``; they win over everything.
_DEFINITIVE: Final[dict[str, BounceClass]] = {
    "ses/permanent/noemail": BounceClass.INVALID_RECIPIENT,
    "ses/permanent/suppressed": BounceClass.INVALID_RECIPIENT,
    "ses/permanent/onaccountsuppressionlist": BounceClass.INVALID_RECIPIENT,
    "ses/transient/mailboxfull": BounceClass.MAILBOX_FULL,
    "ses/transient/messagetoolarge": BounceClass.POLICY_BLOCK,
    "ses/transient/contentrejected": BounceClass.POLICY_BLOCK,
    "ses/transient/attachmentrejected": BounceClass.POLICY_BLOCK,
    "mailgun/permanent/suppress-bounce": BounceClass.INVALID_RECIPIENT,
    "mailgun/permanent/espblock": BounceClass.REPUTATION_BLOCK,
    "mailgun/permanent/old": BounceClass.TRANSIENT,  # Mailgun gave up retrying a temporary failure
    "postmark/bademailaddress": BounceClass.INVALID_RECIPIENT,
    "postmark/dmarcpolicy": BounceClass.AUTH_FAILURE,
    "postmark/spamnotification": BounceClass.POLICY_BLOCK,
    "postmark/virusnotification": BounceClass.POLICY_BLOCK,
    "postmark/dnserror": BounceClass.TRANSIENT,
}
# The provider's verdict on a hard bounce that carries no code and no text at all: trusted then
# (each of these providers puts such an address on its own bounce list).
_BARE: Final[dict[str, BounceClass]] = {
    "ses/permanent/general": BounceClass.INVALID_RECIPIENT,
    "sendgrid/bounce": BounceClass.INVALID_RECIPIENT,
    "mailgun/permanent/bounce": BounceClass.INVALID_RECIPIENT,
}
# The provider's verdict when the code and text say nothing more specific.
_FALLBACK: Final[dict[str, BounceClass]] = {
    "sendgrid/blocked": BounceClass.REPUTATION_BLOCK,
    "postmark/blocked": BounceClass.REPUTATION_BLOCK,
    "postmark/hardbounce": BounceClass.INVALID_RECIPIENT,  # "unknown user, mailbox not found"
    "postmark/softbounce": BounceClass.TRANSIENT,
    "postmark/transient": BounceClass.TRANSIENT,
}
# SendGrid drops a message to an address on its own lists; ``reason`` names the list.
_SENDGRID_DROPPED: Final[dict[str, BounceClass]] = {
    "bounced address": BounceClass.INVALID_RECIPIENT,
    "invalid": BounceClass.INVALID_RECIPIENT,
}

# Not inside a longer dotted number: "host 4.7.1.9" is an IPv4 address, not the code 4.7.1.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_BASIC = re.compile(r"\b([245])\d\d\b")

# Words, checked in this order (first match wins); a block is recognised before an address
# problem because a block's text often also says "rejected" or "not accepted". Matched against the
# lower-cased text: with re.IGNORECASE each search took 3-8x as long (a fifth of a webhook's CPU).
_AUTH_WORDS = re.compile(
    r"unauthenticated|\bspf\b|\bdkim\b|\bdmarc\b|authentication (?:failed|required)|not authenticated"
    r"|sender (?:is )?not authorized|ptr record|reverse dns|authentication level",
)
# The sender refused (RFC 3463 X.1.7 bad sender's mailbox, X.1.8 bad sender's system address): checked
# before the recipient's words, which "address rejected" and "does not exist" would match.
_SENDER_WORDS = re.compile(
    r"sender address (?:rejected|<[^>]*> is not|is not)|domain of sender|sender domain (?:does not|not)"
    r"|(?:bad|invalid|unknown|unroutable|unverified) sender\b|sender verify failed|mail from address",
)
_REPUTATION_WORDS = re.compile(
    r"spamhaus|spamcop|barracuda|block ?list|black ?list|\bdnsbl\b|\brbl\b|reputation|rate.?limit"
    r"|too many (?:messages|connections|emails|recipients)|unusual rate|sending (?:rate|limit)"
    r"|(?:ip|client|host|sender|domain)(?: address)? (?:is |was |has been )?(?:blocked|blacklisted|listed)"
    r"|blocked using|temporarily deferred|throttl|tss0\d|\bs3140\b",
)
_INVALID_WORDS = re.compile(
    r"user unknown|unknown user|unknown recipient|no such (?:user|mailbox|recipient|address)"
    r"|does not exist|doesn't exist|not exist|mailbox (?:not found|unavailable|does not)"
    r"|recipient (?:address )?rejected|invalid (?:recipient|address|mailbox)|address rejected"
    r"|account (?:has been )?disabled|no mx\b|domain not found|host not found|bad destination"
    r"|recipient not found|undeliverable address|user not found|mailbox is disabled"
    r"|(?:does not|doesn't) have an? \S+ account",
)
_FULL_WORDS = re.compile(
    r"over quota|quota exceeded|mailbox (?:is )?full|insufficient (?:system )?storage|exceeded storage",
)
_POLICY_WORDS = re.compile(
    r"\bspam\b|content|policy|virus|malware|message (?:too large|size exceeds)|phish",
)
_AUTH_CODES: Final = frozenset(
    {(7, 20), (7, 21), (7, 22), (7, 23), (7, 24), (7, 25), (7, 26), (7, 27), (7, 515)}  # 515: Outlook
)
_REPUTATION_CODES: Final = frozenset({(7, 28)})
_SENDER_CODES: Final = frozenset({(1, 7), (1, 8)})


def enhanced_code(*texts: str | None) -> tuple[int, int, int] | None:
    """The first RFC 3463 enhanced status code (``5.1.1``) in ``texts``, as numbers."""
    for text in texts:
        if text:
            match = _ENHANCED.search(text)
            if match:
                return int(match[1]), int(match[2]), int(match[3])
    return None


def classify(
    provider: str,
    kind: EventKind,
    provider_type: str | None = None,
    smtp_status: str | None = None,
    reason: str | None = None,
) -> BounceClass | None:
    """The class of one bounce (None when ``kind`` is not a bounce). See the module docstring."""
    if kind not in BOUNCE_KINDS:
        return None
    key = f"{provider}/{provider_type or ''}".lower()
    definitive = _DEFINITIVE.get(key)
    if definitive is not None:
        return definitive
    if key == "sendgrid/dropped":
        return _SENDGRID_DROPPED.get((reason or "").strip().lower(), BounceClass.UNKNOWN)
    code = enhanced_code(smtp_status, reason)
    if code is None and not (reason or "").strip() and key in _BARE:
        return _BARE[key]
    text = reason or ""
    temporary = _temporary(code, text, soft=kind is EventKind.SOFT_BOUNCE)
    from_text = _from_code_and_text(code, text.lower(), temporary=temporary)
    if from_text is not None:
        return from_text
    fallback = _FALLBACK.get(key)
    if fallback is not None:
        return fallback
    return BounceClass.TRANSIENT if temporary else BounceClass.UNKNOWN


def _temporary(code: tuple[int, int, int] | None, text: str, *, soft: bool) -> bool:
    """A 4.x.x code, else a 4xx reply; a soft bounce is temporary unless its reply is 5xx."""
    if code is not None:
        return code[0] == 4
    basic = _basic_class(text)
    return basic == "4" or (soft and basic != "5")


def _from_code_and_text(
    code: tuple[int, int, int] | None, text: str, *, temporary: bool
) -> BounceClass | None:
    """What the enhanced code and the diagnostic text (lower-cased) say, or None when they say
    nothing."""
    subject_detail = (code[1], code[2]) if code else None
    if subject_detail in _AUTH_CODES or subject_detail in _SENDER_CODES:
        return BounceClass.AUTH_FAILURE
    if subject_detail in _REPUTATION_CODES:
        return BounceClass.REPUTATION_BLOCK
    if _AUTH_WORDS.search(text) or _SENDER_WORDS.search(text):
        return BounceClass.AUTH_FAILURE
    if _REPUTATION_WORDS.search(text):
        return BounceClass.REPUTATION_BLOCK
    if subject_detail == (2, 2) or _FULL_WORDS.search(text):
        return BounceClass.MAILBOX_FULL
    if (code is not None and code[1] == 1) or _INVALID_WORDS.search(text):
        # A temporary "no such user" (4.1.1) is a receiver's hiccup, not a verdict.
        return BounceClass.TRANSIENT if temporary else BounceClass.INVALID_RECIPIENT
    if subject_detail == (2, 1):
        return BounceClass.TRANSIENT if temporary else BounceClass.INVALID_RECIPIENT  # mailbox disabled
    if (code is not None and code[1] == 7) or _POLICY_WORDS.search(text):
        return BounceClass.POLICY_BLOCK
    if subject_detail == (3, 4):
        return BounceClass.POLICY_BLOCK  # message too big for the receiver
    return None


def _basic_class(text: str) -> str | None:
    """The class digit of the first basic reply code (``550`` -> ``5``) in ``text``."""
    match = _BASIC.search(text)
    return None if match is None else match[1]


# SES did not send the email: the address is on the SES account's own suppression list (which
# an account shared with other applications may have filled long ago). SES does not count such
# a bounce toward its bounce rate; mailerd's guards do not either. Lower-cased provider types.
_NEVER_SENT: Final = frozenset(
    {("ses", "permanent/onaccountsuppressionlist"), ("ses", "onaccountsuppressionlist")}
)


def never_sent(provider: str, provider_type: str | None) -> bool:
    """Whether the provider reports a bounce or complaint about an email it never sent (SES's
    ``OnAccountSuppressionList``): it suppresses the address, but counts toward no guard rate."""
    return provider_type is not None and (provider, provider_type.lower()) in _NEVER_SENT


def suppresses(kind: EventKind, bounce_class: BounceClass | None) -> bool:
    """Whether an event suppresses its address at once: complaints and unsubscribes always, a
    bounce only when its class is ``invalid_recipient``."""
    if kind in (EventKind.COMPLAINT, EventKind.UNSUBSCRIBE):
        return True
    return kind is EventKind.HARD_BOUNCE and bounce_class is BounceClass.INVALID_RECIPIENT
