"""Every request and response body of the HTTP API, each defined once as a msgspec Struct.

The handlers decode requests with these types (:func:`mailerd.decoding.decode`), build their
answers through them, and :mod:`mailerd.http.openapi` derives the document from them, so the
validation, the answers and the document cannot drift apart. ``NewCampaign`` lives in
:mod:`mailerd.campaigns` because the demo and the tests build it without HTTP; it is the body of
``POST /api/campaigns`` all the same. Query strings are Structs too (``...Query``): one field per
parameter.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from mailerd import campaigns, decoding, suppressions
from mailerd.models import CampaignStatus

MAX_ID = campaigns.MAX_ID

NewCampaign = campaigns.NewCampaign
NewCampaignExample = Annotated[
    NewCampaign,
    msgspec.Meta(
        examples=[
            {
                "account_id": 1,
                "name": "Spring launch",
                "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"},
                "subject": "Hello {{ lead.attributes.first_name }}",
                "html": "<p>Hi</p>",
                "text": "Hi",
                "from": "News <news@example.com>",
                "provider": "ses",
                "send_at": "2030-12-01T09:00:00Z",
            }
        ]
    ),
]
PROVIDER_MESSAGE_ID = r"^[\x21-\x7e]{1,500}$"  # printable ASCII, as every provider's ids are
ProviderMessageId = Annotated[
    str, msgspec.Meta(pattern=PROVIDER_MESSAGE_ID, description="the provider's message id", examples=["m-1"])
]
AccountId = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="the account (0 to 2^63 - 1)")]
CampaignId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="the campaign's id", examples=[1])]
Time = Annotated[dt.datetime, msgspec.Meta(tz=True)]
LogStatusName = Literal["sent", "failed", "unknown", "suppressed"]


# --- errors ----------------------------------------------------------------------------------


class Problem(msgspec.Struct, frozen=True):
    """One problem: what went wrong and, when a field is to blame, its name."""

    code: str
    message: str
    field: str | None


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every error answer. ``errors`` lists every problem when a body has several."""

    error: Problem
    errors: list[Problem] = []


# --- campaigns -------------------------------------------------------------------------------


class ActionBody(msgspec.Struct, frozen=True):
    """The optional body of ``POST /api/campaigns/{id}/{action}``; other keys are ignored."""

    reason: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=campaigns.MAX_REASON_LENGTH,
                pattern=decoding.NO_NUL,
                description="stored as the campaign's reason",
            ),
        ]
        | None
    ) = None


ActionExample = Annotated[ActionBody, msgspec.Meta(examples=[{"reason": "copy check"}])]


class Campaign(msgspec.Struct, frozen=True):
    """A campaign's status and counters (from ``campaign_stats``, never the hot log)."""

    id: int
    account_id: int
    name: str
    status: CampaignStatus
    reason: str | None
    provider: str
    created_at: Time
    send_at: Time | None
    started_at: Time | None
    finished_at: Time | None
    matched: int
    sent: int
    failed: int
    unknown: int
    suppressed: int
    retried: int
    delivered: int
    bounced: int
    complained: int
    unsubscribed: int
    hard_bounced: int
    blocked: int
    shards: int
    shards_done: int
    processed: int
    send_window: Annotated[
        campaigns.SendWindowBody | None, msgspec.Meta(description="the send window, defaults filled in")
    ]
    shards_waiting: Annotated[int, msgspec.Meta(description="shards waiting for their send window")]
    waiting_until: Annotated[
        Time | None, msgspec.Meta(description="when the next waiting shard's window opens (else null)")
    ]
    quota_until: Annotated[
        Time | None,
        msgspec.Meta(
            description="running and waiting for its provider's daily quota or warm-up cap: "
            "when the provider can send again (else null)"
        ),
    ]
    quota_reason: Annotated[
        str | None, msgspec.Meta(description="which limit was reached, with its figures (else null)")
    ]


class CampaignWithRate(Campaign, frozen=True):
    """``GET /api/campaigns/{id}``: the campaign plus this node's view of its rate and ETA."""

    rate_per_s: float
    eta_s: float | None


class CampaignSummary(msgspec.Struct, frozen=True):
    """One campaign of a list."""

    id: int
    account_id: int
    name: str
    status: CampaignStatus
    reason: str | None
    provider: str
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    matched: int
    sent: int
    failed: int


class CampaignPage(msgspec.Struct, frozen=True):
    """A page of campaigns by id; ``next_after`` is the cursor of the next page, if any."""

    campaigns: list[CampaignSummary]
    next_after: int | None


class CampaignListQuery(msgspec.Struct, frozen=True):
    """``GET /api/campaigns`` query."""

    status: CampaignStatus | None = None
    account_id: AccountId | None = None
    after: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="keyset cursor: id > after")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50


# --- segments --------------------------------------------------------------------------------


class PreviewBody(msgspec.Struct, frozen=True):
    """``POST /api/segments/preview``; other keys are ignored."""

    account_id: AccountId
    segment: Annotated[Any, msgspec.Meta(description="the segment condition (see docs/segments.md)")]


PreviewExample = Annotated[
    PreviewBody,
    msgspec.Meta(
        examples=[{"account_id": 1, "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"}}]
    ),
]


class Lead(msgspec.Struct, frozen=True):
    """A lead of a preview."""

    id: int
    email: str
    attributes: Annotated[Any, msgspec.Meta(description="the lead's attributes, as imported")]


class Preview(msgspec.Struct, frozen=True):
    """How many leads match now (suppressed ones excluded) and the first ten by id."""

    count: int
    sample: list[Lead]


# --- leads -----------------------------------------------------------------------------------

LeadId = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="the lead's id", examples=[1])]
LeadAccount = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_ID, description="the account (0 to 2^63 - 1)", examples=[1])
]
Address = Annotated[
    str,
    msgspec.Meta(
        pattern=decoding.NO_NUL,
        description="an address (trimmed; one lead per account and address, whatever its case)",
        examples=["ada@example.com"],
    ),
]


class LeadBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/leads``: one lead, upserted by address as the import does (the address and
    the attributes are checked by :func:`mailerd.importer.parsing.check_lead`, as a JSONL
    line is)."""

    account_id: LeadAccount
    email: Address
    attributes: Annotated[
        dict[str, Any],
        msgspec.Meta(description="merged into the stored ones (these values win), or replacing them"),
    ] = {}
    replace: Annotated[
        bool, msgspec.Meta(description="true: the attributes replace the stored ones instead of merging")
    ] = False


LeadExample = Annotated[
    LeadBody,
    msgspec.Meta(
        examples=[{"account_id": 1, "email": "ada@example.com", "attributes": {"plan": "pro", "n": 1}}]
    ),
]


class StoredLead(msgspec.Struct, frozen=True):
    """A lead as stored. ``attributes`` is the stored JSON as Postgres writes it (numbers keep
    their exact text, ``1.50`` stays ``1.50``)."""

    id: int
    account_id: int
    email: str
    attributes: Annotated[Any, msgspec.Meta(extra_json_schema={"type": "object"})]
    created_at: Time
    updated_at: Time


class LeadPage(msgspec.Struct, frozen=True):
    """A page of an account's leads by id; ``next_after`` is the cursor of the next page, if any."""

    leads: list[StoredLead]
    next_after: int | None


class ErasureRecord(msgspec.Struct, frozen=True):
    """What an erasure removed, as recorded in ``erasures`` (never the address itself):
    :class:`mailerd.erasure.Erasure`."""

    id: int
    account_id: int
    at: Time
    email_hashes: Annotated[
        list[str],
        msgspec.Meta(description="hex HMAC-SHA256 ([privacy] erasure_key) of each lower-cased address"),
    ]
    lead_ids: list[int]
    removed: Annotated[dict[str, int], msgspec.Meta(description="what was removed or scrubbed, per place")]


class LeadDeleted(msgspec.Struct, frozen=True):
    """A deletion: the lead as it was (null when an address erased had no lead), and with
    ``erase=true`` what the erasure removed (else null)."""

    deleted: StoredLead | None
    erasure: ErasureRecord | None


class LeadListQuery(msgspec.Struct, frozen=True):
    """``GET /api/leads`` query: the account's leads by id, those matching ``segment`` and
    ``email`` when given."""

    account_id: LeadAccount
    email: Address | None = None
    segment: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=decoding.NO_NUL,
                description="a segment condition as JSON text (docs/segments.md); suppressed leads match too",
                examples=['{"field": "attributes.plan", "op": "eq", "value": "pro"}'],
            ),
        ]
        | None
    ) = None
    after: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="keyset cursor: id > after")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class LeadQuery(msgspec.Struct, frozen=True):
    """``GET /api/leads/{lead_id}`` query."""

    account_id: LeadAccount


Erase = Annotated[
    bool,
    msgspec.Meta(description="also erase every stored copy of the address in the account (GDPR Art. 17)"),
]


class LeadDeleteQuery(msgspec.Struct, frozen=True):
    """``DELETE /api/leads/{lead_id}`` query."""

    account_id: LeadAccount
    erase: Erase = False


class AddressDeleteQuery(msgspec.Struct, frozen=True):
    """``DELETE /api/leads`` query: the lead by address."""

    account_id: LeadAccount
    email: Address
    erase: Erase = False


class BulkQuery(msgspec.Struct, frozen=True):
    """``POST /api/leads/bulk`` query."""

    account_id: LeadAccount


class BulkLead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a bulk body (the importer's JSONL line; it checks them, not this type)."""

    email: str
    attributes: dict[str, Any] = {}


BulkLines = Annotated[
    list[BulkLead],
    msgspec.Meta(
        description="NDJSON, not a JSON array: one object per line, as in a .jsonl import",
        examples=[
            [
                {"email": "ada@example.com", "attributes": {"plan": "pro"}},
                {"email": "grace@example.com", "attributes": {"plan": "free", "n": 2}},
            ]
        ],
    ),
]


class RejectedLine(msgspec.Struct, frozen=True):
    """A line of a bulk body that was not imported: its number (from 1) and why."""

    line: int
    reason: str


class BulkResult(msgspec.Struct, frozen=True):
    """What a bulk import did: lines imported and rejected, and the first rejects in line order."""

    imported: int
    rejected: int
    rejects: list[RejectedLine]
    seconds: float


class BulkRefused(ErrorBody, frozen=True, omit_defaults=False):
    """422 of a bulk import: nothing imported (every line rejected, none in the body, or a run
    the database stopped); with the counts and first rejects when lines were read."""

    imported: int = 0
    rejected: int = 0
    rejects: list[RejectedLine] = []


# --- suppressions ----------------------------------------------------------------------------


class SuppressionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST`` and ``DELETE /api/suppressions`` (``reason`` is required to delete)."""

    account_id: AccountId
    email: Annotated[
        str, msgspec.Meta(pattern=decoding.NO_NUL, description="the address (trimmed and lower-cased)")
    ]
    reason: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=suppressions.MAX_REASON_LENGTH,
                pattern=decoding.NO_NUL,
                description="why; required on DELETE",
            ),
        ]
        | None
    ) = None


SuppressionExample = Annotated[
    SuppressionBody,
    msgspec.Meta(examples=[{"account_id": 1, "email": "carol@example.com", "reason": "asked by phone"}]),
]


class Suppression(msgspec.Struct, frozen=True):
    """One row of an account's suppression list."""

    account_id: int
    email: str
    reason: str
    source: str | None
    at: Time


class SuppressionAdded(Suppression, frozen=True):
    """The row, and whether this request added it (false: it was already there)."""

    created: bool


class SuppressionRemoved(msgspec.Struct, frozen=True):
    """The row as it was, and the reason given for removing it."""

    removed: Suppression
    reason: str


class SuppressionPage(msgspec.Struct, frozen=True):
    """A page of an account's suppression list by address."""

    suppressions: list[Suppression]
    next_after: str | None


class SuppressionListQuery(msgspec.Struct, frozen=True):
    """``GET /api/suppressions`` query."""

    account_id: AccountId
    after: Annotated[
        str, msgspec.Meta(pattern=decoding.NO_NUL, description="keyset cursor: addresses after this one")
    ] = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


# --- health and webhooks ---------------------------------------------------------------------


class Alive(msgspec.Struct, frozen=True):
    """``GET /healthz``."""

    status: Literal["ok"]


class Ready(msgspec.Struct, frozen=True):
    """``GET /readyz``: 200 when ready, 503 while starting, draining or unable to log."""

    ready: bool


class Received(msgspec.Struct, frozen=True):
    """``POST /webhooks/{provider}``: how many events were committed."""

    received: int
