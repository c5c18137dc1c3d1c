"""One MIME message per recipient, built with the standard library's ``email`` package (pure).

``multipart/alternative`` with the text part first and the HTML part second (a single part when
the campaign has only one), the campaign's headers and ``Reply-To``, per recipient
``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058), our ids in
``X-Mailerd-Campaign``/``X-Mailerd-Lead``, and a ``Message-ID`` under our domain that names the
campaign and the lead (it is also the message id logged for the recipient).

The message is 7-bit unless an address itself needs SMTPUTF8 (a local part that is not ASCII,
the lead's or the campaign's): a display name in ``From`` or ``Reply-To`` is RFC 2047 encoded
(the name only, never the address) and a domain written in IDNA A-labels
(:func:`compose.seven_bit_mailbox_line`). A message that is not 7-bit is written in UTF-8
(RFC 6532) and goes with SMTPUTF8.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from email import charset as charset_mod
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Final

from mailerd.providers import compose

CAMPAIGN_HEADER: Final = "X-Mailerd-Campaign"
LEAD_HEADER: Final = "X-Mailerd-Lead"
# The legacy (compat32) API is 4x faster than EmailMessage for the same bytes: it is the path of
# every ASCII address. Its parts are quoted-printable UTF-8 and its header values 7-bit (RFC 2047).
_COMPAT: Final = email.policy.compat32.clone(linesep="\r\n")
_UTF8: Final = charset_mod.Charset("utf-8")
_UTF8.body_encoding = charset_mod.QP
_UTF8_POLICY: Final = email.policy.SMTPUTF8  # an address that is not ASCII (RFC 6531, 6532)
_MAX_LINE: Final = 998  # RFC 5322 2.1.1
_MAILBOX_FIELDS: Final = frozenset({"From", "Reply-To"})  # structured: not unstructured text


# Every line boundary of str.splitlines: the email package folds or refuses each of them, so a
# rendered subject with U+2028 was cut at it for one recipient and refused for another.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def message_id(campaign_id: int, lead_id: int, domain: str) -> str:
    """``<<time>.<pid>.<random>.c7.l42@domain>``: unique, and readable in a mail server's log."""
    return email.utils.make_msgid(idstring=f"c{campaign_id}.l{lead_id}", domain=domain)


def build(
    rendered: compose.Rendered,
    *,
    campaign_id: int,
    sender: str,
    headers: list[tuple[str, str]],
    domain: str,
) -> tuple[str, bytes]:
    """``(Message-ID, the message's bytes)``; ValueError for a header value with a line break
    (a rendered subject, say: it could inject headers): that recipient fails, the others go."""
    lead = rendered.lead
    mid = message_id(campaign_id, lead.id, domain)
    to = compose.seven_bit_address(lead.email)  # an IDN domain in A-labels: no SMTPUTF8 for it
    fields = [
        ("From", sender),
        ("To", to),
        ("Subject", rendered.subject),
        ("Date", email.utils.formatdate(localtime=False, usegmt=True)),
        ("Message-ID", mid),
        *headers,
        *compose.unsubscribe_headers(rendered.unsubscribe_url),
        (CAMPAIGN_HEADER, str(campaign_id)),
        (LEAD_HEADER, str(lead.id)),
    ]
    for name, value in fields:
        if _LINE_BREAK.search(value):
            raise ValueError(f"{name}: a header value may not contain a line break")
    if to.isascii():
        try:
            return mid, _legacy(rendered, fields)
        except compose.NeedsSmtpUtf8:
            pass  # a From or Reply-To whose local part is not ASCII
    return mid, _utf8(rendered, fields).as_bytes()


def _legacy(rendered: compose.Rendered, fields: list[tuple[str, str]]) -> bytes:
    """The body parts through the email package; the header lines written here (values are
    checked for line breaks above; one that is not ASCII or too long is RFC 2047 encoded and
    folded), which is most of what the generator would spend its time on. NeedsSmtpUtf8 when
    a mailbox cannot be written in 7-bit."""
    head = "".join(_header_line(name, value) for name, value in fields)
    parts = []
    if rendered.text or not rendered.html:
        parts.append(MIMEText(rendered.text or " ", "plain", _UTF8))  # type: ignore[arg-type]  # a Charset works: QP
    if rendered.html:
        parts.append(MIMEText(rendered.html, "html", _UTF8))  # type: ignore[arg-type]  # a Charset works: QP
    body: Message = parts[0] if len(parts) == 1 else MIMEMultipart("alternative", _subparts=parts)
    return head.encode("ascii") + body.as_bytes(policy=_COMPAT)


def _header_line(name: str, value: str) -> str:
    line = f"{name}: {value}\r\n"
    if value.isascii() and len(line) <= _MAX_LINE:
        return line
    if name in _MAILBOX_FIELDS:
        # Encoding the whole value as one RFC 2047 word would hide the address in it: replies
        # to "=?utf-8?q?Zo=C3=AB_<help=40example.com>?=" go nowhere.
        return compose.seven_bit_mailbox_line(name, value)
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n"


def _utf8(rendered: compose.Rendered, fields: list[tuple[str, str]]) -> EmailMessage:
    msg = EmailMessage(policy=_UTF8_POLICY)
    for name, value in fields:
        msg[name] = value
    if rendered.text or not rendered.html:
        msg.set_content(rendered.text or " ")
        if rendered.html:
            msg.add_alternative(rendered.html, subtype="html")
    else:
        msg.set_content(rendered.html, subtype="html")
    return msg
