"""One-click unsubscribe (RFC 8058): ``GET /u/{token}`` shows a button, ``POST`` unsubscribes.

The answers are HTML pages, except the JSON errors that say the node cannot act right now.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import urllib.parse

import asyncpg
from aiohttp import hdrs, http_exceptions, web

from mailerd import db, metrics, unsubscribe
from mailerd.db import events as events_db
from mailerd.db import leads
from mailerd.http import encoding
from mailerd.http.errors import ApiError
from mailerd.http.services import SERVICES, pool
from mailerd.http.webhooks import record_events
from mailerd.models import Event, EventKind

# What aiohttp raises on a form it cannot read: a broken part header (InvalidHeader), an
# unknown charset (LookupError) or transfer encoding (RuntimeError), bad bytes (ValueError), a
# body whose Content-Encoding does not decode (RequestPayloadError, BodyUndecodable).
_MALFORMED_FORM = (
    encoding.BodyUndecodable,
    ValueError,
    LookupError,
    RuntimeError,
    http_exceptions.HttpProcessingError,
    web.RequestPayloadError,
)


async def _form_fields(request: web.Request) -> dict[str, str]:
    """The form's text fields (``application/x-www-form-urlencoded`` or ``multipart/form-data``).
    The server leaves bodies compressed (:mod:`mailerd.http.encoding`): a compressed form is
    decoded first, then read by the standard library."""
    decoding = encoding.decoder(request)
    if decoding is None:
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    body = encoding.decode_whole(decoding, await request.read(), request.client_max_size)
    if request.content_type == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(body.decode(request.charset or "utf-8"), keep_blank_values=True))
    if request.content_type != "multipart/form-data":
        return {}
    head = f"Content-Type: {request.headers[hdrs.CONTENT_TYPE]}\r\n\r\n".encode("utf-8", "surrogateescape")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        # as strict as aiohttp's reader: a malformed part is a malformed form
        transfer = (part["Content-Transfer-Encoding"] or "binary").strip().lower()
        if message.defects or part.defects or transfer not in _TRANSFER_ENCODINGS:
            raise ValueError("a malformed multipart part")
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                fields[name] = payload.decode(part.get_content_charset() or "utf-8")
    return fields


_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary", "base64", "quoted-printable"})


# The pages may not be framed: a site framing the confirmation page could trick its reader into
# clicking the button (clickjacking). frame-ancestors for today's browsers, X-Frame-Options for
# older ones. Nothing else loads: the pages are their own inline <style> and a form that posts
# back to the page's own URL.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
    )


def _secret(request: web.Request) -> bytes:
    secret = request.app[SERVICES].config.unsubscribe.secret
    if secret is None:
        raise ApiError(404, "not_found", "one-click unsubscribe is not configured")
    return secret.reveal().encode()


async def page(request: web.Request) -> web.Response:
    """GET /u/{token}: a page with a button; changes nothing (mail scanners prefetch links)."""
    try:
        unsubscribe.read_token(_secret(request), request.match_info["token"])
    except unsubscribe.BadToken:
        return _html(unsubscribe.invalid_page(), status=400)
    return _html(unsubscribe.confirm_page())


async def _addresses(
    conn: asyncpg.Connection, account_id: int, campaign_id: int, lead_id: int, sent_to: str | None
) -> list[str]:
    """What a one-click unsubscribe suppresses, the address the email went to first (the event's).

    That address is the one that clicked, and other leads of the account may hold it (the host
    changed this lead's address since, and imported the old one again): the token carries it
    (version 2); a version 1 token does not, and the provider's stored events about the email
    are what is known of it (:func:`mailerd.db.events.reported_addresses`). Then the lead's
    address now, when it differs: the person asked to stop. A lead deleted or erased since has
    none; an erased person's address is kept as the erasure keeps it, a keyed hash
    (:func:`mailerd.events.record`), never in plain text again.
    """
    mailed = (
        [sent_to] if sent_to else await events_db.reported_addresses(conn, account_id, campaign_id, lead_id)
    )
    current = await leads.email_of(conn, account_id, lead_id)
    return list(dict.fromkeys([*mailed, *([current] if current else [])]))


async def one_click(request: web.Request) -> web.Response:
    """POST /u/{token} with ``List-Unsubscribe=One-Click`` (RFC 8058): unsubscribe, answer 200.

    Recorded as an ``unsubscribe`` event whose receipt is ``campaign:lead``, so a repeat is
    recorded once; answered only once committed, never with a redirect. Suppressed: the address
    the email went to (the one that clicked: the token carries it, :func:`_addresses`), and the
    lead's address now when the host changed it since (the person asked to stop).
    """
    services = request.app[SERVICES]
    try:
        account_id, campaign_id, lead_id, sent_to = unsubscribe.read_token(
            _secret(request), request.match_info["token"]
        )
    except unsubscribe.BadToken:
        return _html(unsubscribe.invalid_page(), status=400)
    try:
        fields = await _form_fields(request)
    except _MALFORMED_FORM:
        return _html(unsubscribe.not_one_click_page(), status=400)
    except ApiError as exc:  # 413 past the body limit once decoded, 415 for another encoding
        return _html(unsubscribe.not_one_click_page(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:  # aiohttp's own 413, raised by request.post()
        return _html(unsubscribe.not_one_click_page(), status=413)
    if not unsubscribe.is_one_click(fields):
        return _html(unsubscribe.not_one_click_page(), status=400)
    if services.writer is None:
        raise ApiError(503, "unavailable", "events cannot be recorded right now")
    try:
        async with pool(request).acquire() as conn:
            addresses = await _addresses(conn, account_id, campaign_id, lead_id, sent_to)
    except db.DB_ERRORS:
        raise ApiError(503, "unavailable", "cannot unsubscribe right now; please try again") from None
    event = Event(
        provider="list-unsubscribe",
        kind=EventKind.UNSUBSCRIBE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=addresses[0] if addresses else None,
        receipt=f"{campaign_id}:{lead_id}",
        campaign_id=campaign_id,
        lead_id=lead_id,
        account_id=account_id,
        provider_type="one-click",
        also_suppresses=tuple(addresses[1:]),
    )
    await record_events(services.writer, [event])
    metrics.WEBHOOK_EVENTS.labels("list-unsubscribe", str(EventKind.UNSUBSCRIBE)).inc()
    return _html(unsubscribe.done_page())
