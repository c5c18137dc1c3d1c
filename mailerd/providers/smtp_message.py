"""One MIME message per recipient, built with the standard library's ``email`` package (pure).

``multipart/alternative`` with the text part first and the HTML part second (a single part when
the campaign has only one), the campaign's headers and ``Reply-To``, per recipient
``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058), our ids in
``X-Mailerd-Campaign``/``X-Mailerd-Lead``, and a ``Message-ID`` under our domain that names the
campaign and the lead (it is also the message id logged for the recipient).
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage
from typing import Final

from mailerd.providers import compose

CAMPAIGN_HEADER: Final = "X-Mailerd-Campaign"
LEAD_HEADER: Final = "X-Mailerd-Lead"
_POLICY: Final = email.policy.SMTP


def message_id(campaign_id: int, lead_id: int, domain: str) -> str:
    """``<c7.l42.<time>.<pid>.<random>@domain>``: unique, and readable in a mail server's log."""
    return email.utils.make_msgid(idstring=f"c{campaign_id}.l{lead_id}", domain=domain)


def build(
    rendered: compose.Rendered,
    *,
    campaign_id: int,
    sender: str,
    headers: list[tuple[str, str]],
    domain: str,
) -> tuple[str, bytes]:
    """``(Message-ID, the message's bytes)``; ValueError for a header the email package refuses
    (a line break in a rendered subject, say): that recipient fails, the others go."""
    lead = rendered.lead
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = lead.email
    msg["Subject"] = rendered.subject
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mid = message_id(campaign_id, lead.id, domain)
    msg["Message-ID"] = mid
    for name, value in [*headers, *compose.unsubscribe_headers(rendered.unsubscribe_url)]:
        msg[name] = value
    msg[CAMPAIGN_HEADER] = str(campaign_id)
    msg[LEAD_HEADER] = str(lead.id)
    if rendered.text or not rendered.html:
        msg.set_content(rendered.text or " ")
        if rendered.html:
            msg.add_alternative(rendered.html, subtype="html")
    else:
        msg.set_content(rendered.html, subtype="html")
    return mid, msg.as_bytes()
