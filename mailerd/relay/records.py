"""The records the relay publishes: one JSON object per outbox row, with a stable id.

Pure: rows in, :class:`Record` out. Every record has ``schema`` (its version), ``kind`` and an
``id`` that is the same however often the record is delivered, so consumers de-duplicate on it.
The fields of each kind are documented in docs/events.md and checked by the JSON Schema files in
``mailerd/relay/schemas/``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

from mailerd.models import LogStatus

SCHEMA_VERSION = 1
KINDS = ("email", "event", "campaign", "erasure")
EVENT_TYPES = ("delivered", "hard_bounce", "soft_bounce", "complaint", "unsubscribe")

_STATUS_NAMES = {int(status): status.name.lower() for status in LogStatus}
_BOUNCE = {"hard_bounce": "hard", "soft_bounce": "soft"}


class Record:
    """One record as published: ``value`` is its JSON, ``fields`` the same data as a mapping.

    ``key`` orders it in Kafka (one lead's records share a key, so they stay in one partition),
    ``tx`` is the transaction that wrote its row, ``at`` its time (sent_at, received_at, at).
    Email records are built as JSON by the database (:mod:`mailerd.db.relay`): their ``id`` and
    ``fields`` are parsed from ``value`` only when asked for (Kafka never asks).
    """

    __slots__ = ("_fields", "_id", "at", "key", "kind", "tx", "value")

    def __init__(
        self,
        kind: str,
        key: bytes,
        tx: int,
        at: dt.datetime,
        value: bytes,
        *,
        record_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.key = key
        self.tx = tx
        self.at = at
        self.value = value
        self._id = record_id
        self._fields = fields

    def __repr__(self) -> str:
        return f"Record({self.kind!r}, {self.key!r}, tx={self.tx}, value={self.value!r})"

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = str(self.fields["id"])
        return self._id

    @property
    def fields(self) -> Mapping[str, Any]:
        if self._fields is None:
            self._fields = orjson.loads(self.value)
        return self._fields

    @property
    def account_id(self) -> int | None:
        value = self.fields.get("account_id")
        return value if isinstance(value, int) else None

    @property
    def lead_id(self) -> int | None:
        value = self.fields.get("lead_id")
        return value if isinstance(value, int) else None

    @property
    def event_type(self) -> str | None:
        """For an ``event`` record: delivered, hard_bounce, soft_bounce, complaint, unsubscribe."""
        value = self.fields.get("type") if self.kind == "event" else None
        return value if isinstance(value, str) else None


def _make(kind: str, record_id: str, key: str, tx: int, at: dt.datetime, fields: dict[str, Any]) -> Record:
    body = {"schema": SCHEMA_VERSION, "kind": kind, "id": record_id, **fields}
    return Record(kind, key.encode(), tx, at, orjson.dumps(body), record_id=record_id, fields=body)


def lead_key(account_id: int | None, lead_id: int | None) -> str:
    """``account:lead``; an unknown part is empty (an unmatched event, a deleted campaign)."""
    return f"{'' if account_id is None else account_id}:{'' if lead_id is None else lead_id}"


def email(
    *,
    tx: int,
    campaign_id: int,
    lead_id: int,
    status: int,
    provider_message_id: str | None,
    error: str | None,
    sent_at: dt.datetime,
    account_id: int | None,
    provider: str | None,
    address: str | None,
) -> Record:
    """One ``email_log`` row (with its campaign's account and provider, its lead's address).
    The relay's reads build the same record in the database (:func:`from_database`); this is
    the reference the tests hold that SQL to."""
    record_id = f"email:{campaign_id}:{lead_id}"
    body = {
        "schema": SCHEMA_VERSION,
        "kind": "email",
        "id": record_id,
        "account_id": account_id,
        "campaign_id": campaign_id,
        "lead_id": lead_id,
        "address": address,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "status": _STATUS_NAMES.get(status) or str(status),
        "reason": error,
        "sent_at": sent_at,
    }
    key = f"{'' if account_id is None else account_id}:{lead_id}".encode()
    return Record("email", key, tx, sent_at, orjson.dumps(body), record_id=record_id, fields=body)


def event(row: Mapping[str, Any]) -> Record:
    """One ``email_events`` row."""
    kind = row["kind"]
    return _make(
        "event",
        f"event:{row['provider']}:{row['provider_event_id']}",
        lead_key(row["account_id"], row["lead_id"]),
        row["tx"],
        row["received_at"],
        {
            "type": kind,
            "bounce": _BOUNCE.get(kind),
            "account_id": row["account_id"],
            "campaign_id": row["campaign_id"],
            "lead_id": row["lead_id"],
            "address": row["email"],
            "provider": row["provider"],
            "provider_event_id": row["provider_event_id"],
            "provider_message_id": row["provider_message_id"],
            "provider_type": row["provider_type"],
            "reason": row["reason"],
            "smtp_status": row["smtp_status"],
            "bounce_class": row["bounce_class"],
            "occurred_at": row["occurred_at"],
            "received_at": row["received_at"],
        },
    )


def campaign(row: Mapping[str, Any]) -> Record:
    """One ``campaign_changes`` row: a campaign's status changed."""
    return _make(
        "campaign",
        f"campaign:{row['campaign_id']}:{row['generation']}",
        str(row["campaign_id"]),
        row["tx"],
        row["at"],
        {
            "account_id": row["account_id"],
            "campaign_id": row["campaign_id"],
            "generation": row["generation"],
            "status": row["status"],
            "previous_status": row["previous_status"],
            "cause": row["cause"],
            "reason": row["reason"],
            "at": row["at"],
        },
    )


def erasure(row: Mapping[str, Any]) -> Record:
    """One ``erasures`` row: a person was erased from an account; consumers erase them too."""
    return _make(
        "erasure",
        f"erasure:{row['id']}",
        str(row["account_id"]),
        row["tx"],
        row["at"],
        {
            "account_id": row["account_id"],
            "address_hashes": [bytes(h).hex() for h in row["email_hashes"] or []],
            "lead_ids": list(row["lead_ids"] or []),
            "at": row["at"],
        },
    )


def merged(*groups: list[Record]) -> list[Record]:
    """Every record of every kind in commit-safe order: by transaction, then kind (an email
    before the events about it within one transaction), then as read."""
    filled = [group for group in groups if group]
    if len(filled) <= 1:
        return list(filled[0]) if filled else []  # one table's rows come in tx order already
    rank = {kind: index for index, kind in enumerate(KINDS)}
    everything = [record for group in filled for record in group]
    everything.sort(key=lambda record: (record.tx, rank[record.kind]))
    return everything


def erasures_last(batch: list[Record]) -> list[Record]:
    """The batch with each erasure moved after the last record of the leads it erased (the
    others keep their order, and the erasures theirs).

    Transaction ids are taken at a transaction's first write, not at its commit: a writer flush
    that took its id after an erasure's and committed before it sorted after the erasure, so the
    person's email or event came after the record telling consumers to delete them. Every
    transaction that committed before an erasure is committed in the snapshot the erasure was
    read in: in a batch read up to that snapshot (not capped), it is in this batch or an earlier
    one. Only the erased leads' records move ahead (by key, ``account:lead``): a record of
    someone else, or of the person imported again as a new lead after the erasure, stays after
    it, as consumers erasing by address hash would erase the new lead's record too."""
    erasures = [
        (
            position,
            {lead_key(record.account_id, int(lead)).encode() for lead in record.fields.get("lead_ids") or []},
        )
        for position, record in enumerate(batch)
        if record.kind == "erasure"
    ]
    if not erasures:
        return batch
    # One pass for all of them (a batch far behind may hold many erasures): each erased lead's
    # last record in the batch.
    wanted = set().union(*(keys for _, keys in erasures))
    last_of: dict[bytes, int] = {}
    if wanted:
        for position, record in enumerate(batch):
            if record.key in wanted and record.kind != "erasure":
                last_of[record.key] = position
    moves: dict[int, list[Record]] = {}  # position -> the erasures that go right after it
    last = -1  # where the previous erasure went: erasures keep their order
    for position, keys in erasures:
        after = max([position, last, *(last_of.get(key, -1) for key in keys)])
        moves.setdefault(after, []).append(batch[position])
        last = after
    ordered: list[Record] = []
    for position, record in enumerate(batch):
        if record.kind != "erasure":
            ordered.append(record)
        ordered += moves.get(position, ())
    return ordered


def from_database(kind: str, tx: int, at: dt.datetime, key: bytes, value: bytes) -> Record:
    """A record the database built (key and JSON value as bytes)."""
    return Record(kind, key, tx, at, value)


def _key_of(kind: str, fields: Mapping[str, Any]) -> str:
    if kind == "campaign":
        return str(fields.get("campaign_id"))
    if kind == "erasure":
        return str(fields.get("account_id"))
    return lead_key(fields.get("account_id"), fields.get("lead_id"))


# Each kind's own time, the ``Record.at`` of a record as it was read.
_TIME_FIELDS = {"email": "sent_at", "event": "received_at", "campaign": "at", "erasure": "at"}


def stored(kind: str, record_id: str, text: str, at: dt.datetime) -> Record:
    """A record kept as JSON text (a dead letter), as it was published; its ``at`` is its own
    time again (the partition the reports database puts it in), ``at`` (when it was stored)
    only where that is missing."""
    fields = orjson.loads(text)
    own = fields.get(_TIME_FIELDS.get(kind, "at"))
    if isinstance(own, str):
        with contextlib.suppress(ValueError):
            at = dt.datetime.fromisoformat(own)
    key = _key_of(kind, fields).encode()
    return Record(kind, key, 0, at, text.encode(), record_id=record_id, fields=fields)
