"""The leads API (``/api/leads...``): one lead upserted, read or deleted; pages of an account's
leads by segment; bulk NDJSON imports.

The rules are the importer's, from its own code: a lead is checked as a JSONL line is
(:func:`mailerd.importer.parsing.check_lead`), stored with the same upsert (attributes merged,
the new values win), and a bulk body goes through the JSONL import itself
(:func:`mailerd.importer.streams.import_stream`), streamed, in one transaction.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import orjson
import structlog
from aiohttp import web

from mailerd import erasure, segments
from mailerd.db import leads as leads_db
from mailerd.http import bodies, encoding, parsing
from mailerd.http.errors import ApiError, json_response
from mailerd.http.services import SERVICES, pool
from mailerd.importer import loading, streams
from mailerd.importer import parsing as lead_rules
from mailerd.importer.rejects import ImportFailed, ImportResult

log = structlog.get_logger(__name__)

MAX_BULK_RUNNING = 2  # bulk imports at once per node: each holds a pooled connection throughout
BULK_REJECTS_LISTED = 100  # rejected lines listed in a bulk answer (all are counted)
_BULK_RUNNING = [0]  # (a list: module state the handlers change; one event loop per process)


# --- answers ---------------------------------------------------------------------------------


def _stored(row: asyncpg.Record) -> bodies.StoredLead:
    """A lead row (:data:`mailerd.db.leads.LEAD_COLUMNS`) as the API answers it."""
    return bodies.StoredLead(
        id=row["id"],
        account_id=row["account_id"],
        email=row["email"],
        attributes=orjson.Fragment(row["attributes"]),  # the stored JSON text, verbatim
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _plain(lead: bodies.StoredLead) -> dict[str, Any]:
    # msgspec.to_builtins cannot carry an orjson.Fragment; the fields are flat, orjson takes them.
    return msgspec.structs.asdict(lead)


def _lead_id(request: web.Request) -> int:
    """The ``{lead_id}`` of the path; 404 naming it when it is not a whole number up to 2^63 - 1."""
    return parsing.path_id(request, "lead_id", "lead", minimum=0)


def _address(text: str) -> str:
    """An address of a query, trimmed: 422 when it cannot be an address at all (a lookup or an
    erasure reaches addresses stored by earlier versions, or from elsewhere, that a new lead
    could not have)."""
    address = lead_rules.canonical(text.strip())
    if not lead_rules.is_any_address(address):
        raise ApiError(422, "invalid", f"email: not an email address: {address[:100]!r}", "email")
    return address


def _refused(exc: Exception) -> ApiError:
    """422 for a value the database cannot store (the import rejects such a row)."""
    reason = str(exc).partition("\n")[0]
    field = getattr(exc, "column_name", None) or "attributes"
    return ApiError(422, "invalid", f"refused by the database: {reason}", field)


# --- one lead --------------------------------------------------------------------------------


async def upsert_lead(request: web.Request) -> web.Response:
    """POST /api/leads: 201 and the lead when it is new, 200 and the lead as stored otherwise."""
    data = await parsing.json_object(request, lead_rules.loads_exact)  # attributes stored as sent
    body = parsing.struct(bodies.LeadBody, data)
    checked = lead_rules.check_lead({key: data[key] for key in lead_rules.LEAD_KEYS if key in data})
    if isinstance(checked, lead_rules.LeadProblem):
        message = (
            checked.reason
            if checked.reason.startswith(checked.field)
            else f"{checked.field}: {checked.reason}"
        )
        raise ApiError(422, "invalid", message, checked.field)
    email, document = checked
    async with pool(request).acquire() as conn:
        try:
            row, created = await leads_db.upsert_one(
                conn, body.account_id, email, document, replace=body.replace
            )
        except loading.REFUSALS as exc:
            raise _refused(exc) from None
    return json_response(_plain(_stored(row)), status=201 if created else 200)


async def get_lead(request: web.Request) -> web.Response:
    """GET /api/leads/{lead_id}?account_id=: the lead; 404 when the account has no such lead."""
    lead_id = _lead_id(request)
    query = parsing.query(request, bodies.LeadQuery)
    async with pool(request).acquire() as conn:
        row = await leads_db.lead_by_id(conn, query.account_id, lead_id)
    if row is None:
        raise ApiError(404, "not_found", f"no lead {lead_id} in account {query.account_id}", "lead_id")
    return json_response(_plain(_stored(row)))


async def list_leads(request: web.Request) -> web.Response:
    """GET /api/leads?account_id=&email=&segment=&after=&limit= (keyset pagination by id)."""
    query = parsing.query(request, bodies.LeadListQuery)
    email = None if query.email is None else _address(query.email)
    segment = None
    if query.segment is not None:
        try:
            segment = segments.parse(query.segment)
        except segments.SegmentError as exc:
            raise ApiError(422, "invalid", f"segment: {exc}", "segment") from None
    async with pool(request).acquire() as conn:
        rows = await leads_db.leads_page(
            conn, query.account_id, after=query.after, limit=query.limit, email=email, segment=segment
        )
    leads = [_plain(_stored(row)) for row in rows]
    next_after = rows[-1]["id"] if len(rows) == query.limit else None
    return json_response({"leads": leads, "next_after": next_after})


async def delete_lead(request: web.Request) -> web.Response:
    """DELETE /api/leads/{lead_id}?account_id=&erase=: the lead as it was (and with ``erase``,
    what the erasure removed); 404 when the account has no such lead."""
    lead_id = _lead_id(request)
    query = parsing.query(request, bodies.LeadDeleteQuery)
    key = _erasure_key(request) if query.erase else None
    async with pool(request).acquire() as conn, conn.transaction():
        if key is None:
            row = await leads_db.delete_by_id(conn, query.account_id, lead_id)
            done = None
        else:
            row = await leads_db.lead_by_id(conn, query.account_id, lead_id)
            try:
                done = None if row is None else await _erase(conn, query.account_id, key, lead_id=lead_id)
            except erasure.NothingToErase:  # deleted meanwhile by another request
                row = None
    if row is None:
        raise ApiError(404, "not_found", f"no lead {lead_id} in account {query.account_id}", "lead_id")
    return _deleted(query.account_id, row, done)


async def delete_by_address(request: web.Request) -> web.Response:
    """DELETE /api/leads?account_id=&email=&erase=: the lead with that address as it was; 404
    when there is none. With ``erase``, every stored copy of the address in the account is
    erased, lead or not (the answer's ``deleted`` is null when there was no lead)."""
    query = parsing.query(request, bodies.AddressDeleteQuery)
    email = _address(query.email)
    key = _erasure_key(request) if query.erase else None
    async with pool(request).acquire() as conn, conn.transaction():
        if key is None:
            row = await leads_db.delete_by_email(conn, query.account_id, email)
            done = None
        else:
            row = await leads_db.lead_by_email(conn, query.account_id, email)
            done = await _erase(conn, query.account_id, key, emails=[email])
    if row is None and done is None:
        raise ApiError(404, "not_found", f"no lead {email!r} in account {query.account_id}", "email")
    return _deleted(query.account_id, row, done)


def _erasure_key(request: web.Request) -> bytes:
    """The node's erasure key; 409 when it has none (nothing is changed then)."""
    try:
        return erasure.configured_key(request.app[SERVICES].config)
    except erasure.ErasureUnavailable as exc:
        raise ApiError(409, "erasure_unavailable", str(exc), "erase") from None


async def _erase(
    conn: asyncpg.Connection,
    account_id: int,
    key: bytes,
    *,
    lead_id: int | None = None,
    emails: list[str] | None = None,
) -> erasure.Erasure:
    return await erasure.erase(
        conn, account_id=account_id, key=key, by="api", lead_id=lead_id, emails=emails or ()
    )


def _deleted(account_id: int, row: asyncpg.Record | None, done: erasure.Erasure | None) -> web.Response:
    lead = None if row is None else _plain(_stored(row))
    record = None if done is None else msgspec.convert(done, bodies.ErasureRecord, from_attributes=True)
    if done is None and row is not None:
        log.info("lead_deleted", account_id=account_id, lead_id=row["id"])
    return json_response(
        {"deleted": lead, "erasure": None if record is None else msgspec.to_builtins(record)}
    )


# --- bulk ------------------------------------------------------------------------------------


async def bulk_import(request: web.Request) -> web.Response:
    """POST /api/leads/bulk?account_id=: an NDJSON body imported as a .jsonl file is.

    200 when lines were imported (the rejects listed), 422 when none was (as the CLI's exit 1),
    413 past ``[http] max_bulk_bytes``, 429 while :data:`MAX_BULK_RUNNING` others run, 409 when
    the database ended the import's transaction for another one (a deadlock: retry).
    """
    query = parsing.query(request, bodies.BulkQuery)
    limits = request.app[SERVICES].config.http
    if request.content_length is not None and request.content_length > limits.max_bulk_bytes:
        raise _too_large(limits.max_bulk_bytes)
    if _BULK_RUNNING[0] >= MAX_BULK_RUNNING:
        raise ApiError(429, "busy", f"{MAX_BULK_RUNNING} bulk imports are running on this node; retry")
    _BULK_RUNNING[0] += 1
    try:
        result = await _import(request, query.account_id, limits.max_bulk_bytes, limits.max_body_bytes)
    finally:
        _BULK_RUNNING[0] -= 1
    log.info(
        "leads_bulk_imported",
        account_id=query.account_id,
        imported=result.imported,
        rejected=result.rejected,
        seconds=round(result.seconds, 3),
    )
    rejects = [
        bodies.RejectedLine(r.line, r.reason) for r in sorted(result.first_rejects, key=lambda r: r.line)
    ]
    if result.imported == 0:
        problem = "every line was rejected" if result.rejected else "the body has no lines to import"
        refused = bodies.BulkRefused(
            bodies.Problem("nothing_imported", f"nothing imported: {problem}", "body"),
            imported=0,
            rejected=result.rejected,
            rejects=rejects,
        )
        return json_response(refused, status=422)
    return json_response(
        bodies.BulkResult(result.imported, result.rejected, rejects, round(result.seconds, 3))
    )


async def _import(request: web.Request, account_id: int, max_bytes: int, max_line_bytes: int) -> ImportResult:
    """The import of the body; every way it can fail as an ApiError (nothing imported)."""
    decoding = encoding.decoder(request)
    stream: streams.ByteStream = request.content
    if decoding is not None:
        stream = encoding.DecodedStream(request.content, decoding)
    try:
        async with pool(request).acquire() as conn:
            return await streams.import_stream(
                conn,
                account_id=account_id,
                stream=stream,
                max_bytes=max_bytes,
                max_line_bytes=max_line_bytes,
                keep_rejects=BULK_REJECTS_LISTED,
            )
    except streams.TooLarge:
        raise _too_large(max_bytes) from None
    except streams.Unreadable as exc:
        log.warning("leads_bulk_body_failed", account_id=account_id, error=str(exc))
        raise ApiError(400, "invalid_body", f"the body cannot be read: {exc}") from None
    except ImportFailed as exc:
        raise ApiError(422, "import_failed", f"nothing imported: {exc}", "body") from None
    except asyncpg.TransactionRollbackError as exc:  # deadlock: another writer of the same leads
        reason = str(exc).partition("\n")[0]
        message = f"nothing imported: the database stopped the import for a concurrent one ({reason}); retry"
        raise ApiError(409, "conflict", message, "body") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the body is larger than [http] max_bulk_bytes ({limit:,} bytes)")
