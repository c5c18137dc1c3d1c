"""What every sending client puts in each recipient's email, whatever the provider's API.

- The content: the campaign's Jinja templates compiled once per campaign (on the ``[content]``
  budget), rendered per recipient; or, when they only print plain variables, the provider's own
  substitution syntax plus each recipient's values (no render at all: see :meth:`Composer.tagged`).
- A render that passes the template budget raises :class:`mailerd.models.CampaignBroken` out of
  ``send``: it is the campaign's problem, not the recipient's (the sender fails the campaign with
  the reason). Any other render failure fails that recipient alone. Every recipient of a batch is composed
  before anything is sent, so a budget overrun never interrupts a batch halfway.
- Headers: the campaign's own, ``Reply-To``, and per recipient ``List-Unsubscribe`` with
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058), exactly as SES gets them.
- Our ids (:data:`CAMPAIGN_KEY`, :data:`LEAD_KEY`) in the provider's metadata field, so its
  webhooks map back to the lead without a lookup.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import email.errors
import email.policy
import email.utils
import functools
import re
from collections.abc import Callable, Mapping
from email import headerregistry
from typing import Any, Final, Generic, TypeVar

import markupsafe

from mailerd import content as content_mod
from mailerd import idn
from mailerd.config import ContentConfig
from mailerd.models import Campaign, CampaignBroken, Lead, PermanentError

CAMPAIGN_KEY: Final = "mailerd_campaign"
LEAD_KEY: Final = "mailerd_lead"
ONE_CLICK: Final = "List-Unsubscribe=One-Click"

# (campaign, lead) -> the lead's one-click unsubscribe URL (see mailerd/unsubscribe.py).
UnsubscribeUrl = Callable[[Campaign, Lead], str]

_HEADERS: Final = headerregistry.HeaderRegistry()
_SEVEN_BIT: Final = email.policy.SMTP  # RFC 2047 words, CRLF, folded at 78 characters

# One bare mailbox: local@domain, neither empty, no space or control character, and nothing that
# makes a list or a display name of it ("a@x.com, Bob <b@y.com>" is two recipients to Mailgun).
_NOT_IN_MAILBOX: Final = r'\s\x00-\x1f\x7f,;<>"()\[\]\\'
_MAILBOX: Final = re.compile(rf"[^@{_NOT_IN_MAILBOX}]+@[^@{_NOT_IN_MAILBOX}]+")
NOT_A_MAILBOX: Final = "invalid address: not one local@domain mailbox"
_RAW_VARIABLE: Final = re.compile(r"\{\{\{(\w+)\}\}\}")
_HTML_VARIABLE: Final = re.compile(r"\{\{(\w+)\}\}")


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's email, or why it cannot be sent (``failure``: a render error)."""

    lead: Lead
    subject: str = ""
    html: str = ""
    text: str = ""
    unsubscribe_url: str = ""
    failure: str | None = None


def unsubscribe_headers(url: str) -> list[tuple[str, str]]:
    """RFC 8058 one-click unsubscribe, per recipient (so the provider's DKIM signature covers it)."""
    if not url:
        return []
    return [("List-Unsubscribe", f"<{url}>"), ("List-Unsubscribe-Post", ONE_CLICK)]


def split_address(text: str) -> tuple[str, str]:
    """``"Name <a@b>"`` -> ``("Name", "a@b")``; a bare address has an empty name."""
    name, address = email.utils.parseaddr(text)
    return name, address or text


def address_domain(text: str) -> str:
    return split_address(text)[1].rpartition("@")[2]


class NeedsSmtpUtf8(ValueError):
    """A mailbox whose local part is not ASCII: only SMTPUTF8 (RFC 6531, 6532) carries it."""


@functools.lru_cache(maxsize=256)  # one From and one Reply-To per campaign: composed once
def seven_bit_mailbox_line(field: str, text: str) -> str:
    """``field: value`` + CRLF for one mailbox (``from``/``reply_to`` as campaigns validate them)
    in 7-bit: the display name RFC 2047 encoded when it is not ASCII (only the name: the address
    stays one a reply can reach), the domain in IDNA A-labels (RFC 5890), folded at 78
    characters. ValueError when ``text`` is not one mailbox; :class:`NeedsSmtpUtf8` when its
    local part is not ASCII.

    The email package is not asked to write the address itself: it would RFC 2047 encode a
    non-ASCII domain or local part, which no receiver decodes there (RFC 2047 section 5).
    """
    try:
        header = _HEADERS(field, text)
    except (email.errors.HeaderParseError, IndexError) as exc:  # IndexError: "a@" (CPython)
        raise ValueError(f"{field}: not one address: {text[:100]!r}") from exc
    defects = [d for d in header.defects if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
    if defects or not isinstance(header, headerregistry.AddressHeader) or len(header.addresses) != 1:
        raise ValueError(f"{field}: not one address: {text[:100]!r}")
    address = header.addresses[0]
    if not address.username.isascii():
        raise NeedsSmtpUtf8(f"{field}: the address {address.addr_spec!r} needs SMTPUTF8")
    domain = address.domain
    if not domain.isascii():
        try:
            domain = _a_labels(domain)
        except UnicodeError as exc:
            raise ValueError(f"{field}: the domain {domain!r} is not a valid IDN: {exc}") from None
    mailbox = headerregistry.Address(address.display_name, address.username, domain)
    return _HEADERS(field, [mailbox]).fold(policy=_SEVEN_BIT)


def is_mailbox(address: str) -> bool:
    """Whether a lead's address is one bare ``local@domain`` (see :data:`_MAILBOX`). SendGrid,
    Mailgun and SES refuse a whole call for one address they take for invalid (400), and
    Mailgun's ``to`` reads a comma as two recipients: such a lead fails alone, before the call."""
    return _MAILBOX.fullmatch(address) is not None


def seven_bit_address(address: str) -> str:
    """A bare address with its domain in IDNA A-labels, so that only a local part that is not
    ASCII needs SMTPUTF8; as it is when the domain is no valid IDN (the server then says). It
    is the form webhooks report it in (:mod:`mailerd.idn` reads it back)."""
    return idn.a_label_address(address)


def _a_labels(domain: str) -> str:
    """IDNA 2003 (the standard library's codec): ``bücher.de`` -> ``xn--bcher-kva.de``."""
    return domain.encode("idna").decode("ascii")


def seven_bit_mailbox(text: str) -> str:
    """One mailbox as :func:`seven_bit_mailbox_line` writes it, on one line (for an API that
    takes the address as a string: SES); same errors."""
    line = seven_bit_mailbox_line("From", text)
    return line[len("From: ") :].replace("\r\n", "")


def template_model(lead: Lead, campaign: Campaign, url: str) -> dict[str, Any]:
    """The data of a template stored at the provider: what our own templates may name."""
    return {
        "lead": {"id": lead.id, "email": lead.email, "attributes": lead.attributes},
        "campaign": {"id": campaign.id, "name": campaign.name, "account_id": campaign.account_id},
        "unsubscribe_url": url,
    }


class Composer:
    """One campaign's compiled content and headers; composes each recipient's email."""

    def __init__(
        self,
        campaign: Campaign,
        unsubscribe: UnsubscribeUrl | None,
        limits: ContentConfig | None = None,
    ) -> None:
        self.campaign = campaign
        self._unsubscribe = unsubscribe
        try:
            self.content = content_mod.compile_content(
                campaign.subject, campaign.html_body, campaign.text_body, limits=limits or ContentConfig()
            )
        except content_mod.TemplateError as exc:
            raise PermanentError(f"template error: {exc}") from None
        self.template = content_mod.ses_template(self.content)
        reply = [("Reply-To", campaign.reply_to)] if campaign.reply_to else []
        self.headers: list[tuple[str, str]] = [*campaign.headers, *reply]

    def unsubscribe_url(self, lead: Lead) -> str:
        return self._unsubscribe(self.campaign, lead) if self._unsubscribe is not None else ""

    def render(self, lead: Lead) -> Rendered:
        """The recipient's parts on the budget; CampaignBroken past it (see the module doc)."""
        url = self.unsubscribe_url(lead)
        try:
            subject, html, text = self.content.render(lead, self.campaign, url)
        except content_mod.BudgetExceeded as exc:
            raise CampaignBroken(f"lead {lead.id}: {exc}") from None
        except content_mod.RenderError as exc:
            return Rendered(lead, unsubscribe_url=url, failure=f"render failed: {exc}")
        return Rendered(lead, subject, html, text, url)

    def tagged(self, tag: Callable[[str, bool], str]) -> tuple[str, str, str] | None:
        """The three parts with each plain variable written as the provider's substitution tag
        (``tag(name, html)``), or None when the templates need a full render per recipient."""
        if self.template.generic:
            return None

        def rewrite(part: str, html: bool) -> str:
            out = _RAW_VARIABLE.sub(lambda m: tag(m.group(1), False), part)
            return _HTML_VARIABLE.sub(lambda m: tag(m.group(1), True), out) if html else out

        return (
            rewrite(self.template.subject, False),
            rewrite(self.template.html, True),
            rewrite(self.template.text, False),
        )

    def values(self, lead: Lead, url: str) -> list[tuple[str, str, str]]:
        """``(name, raw value, HTML-escaped value)`` of every plain variable for one recipient."""
        out = []
        for name, get in self.template.getters:
            value = get(lead, self.campaign, url)
            out.append((name, value, str(markupsafe.escape(value))))
        return out


_Derived = TypeVar("_Derived")


class PerCampaign(Generic[_Derived]):
    """What a client keeps per campaign: its :class:`Composer` (the templates compiled once) or
    something derived from it, built on first use and dropped by :meth:`forget`."""

    def __init__(
        self,
        unsubscribe: UnsubscribeUrl | None,
        limits: ContentConfig | None,
        derive: Callable[[Composer], _Derived],
    ) -> None:
        self._unsubscribe = unsubscribe
        self._limits = limits
        self._derive = derive
        self._kept: dict[int, _Derived] = {}

    def get(self, campaign: Campaign) -> _Derived:
        kept = self._kept.get(campaign.id)
        if kept is None:
            kept = self._kept[campaign.id] = self._derive(Composer(campaign, self._unsubscribe, self._limits))
        return kept

    def forget(self, campaign_id: int) -> None:
        self._kept.pop(campaign_id, None)


def composers(unsubscribe: UnsubscribeUrl | None, limits: ContentConfig | None) -> PerCampaign[Composer]:
    """Each campaign's composer, as it is."""
    return PerCampaign(unsubscribe, limits, lambda composer: composer)


def ids(campaign_id: int, lead_id: int) -> Mapping[str, str]:
    """Our ids as the provider's metadata (strings: every provider's metadata is text)."""
    return {CAMPAIGN_KEY: str(campaign_id), LEAD_KEY: str(lead_id)}
