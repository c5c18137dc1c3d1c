"""The provider API's bodies (msgspec Structs): ``GET /api/providers``, ``GET
/api/providers/{provider}`` and ``POST /api/providers/{provider}/resume`` (docs/guards.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from mailerd import campaigns, decoding
from mailerd.http.bodies import Time


class Limits(msgspec.Struct, frozen=True):
    """The provider guard's thresholds for this provider."""

    min_sample: int
    max_bounce_rate: float
    max_complaint_rate: float
    max_blocked_rate: float


class Hold(msgspec.Struct, frozen=True):
    """The provider guard holds the account: its campaigns may not start or resume."""

    signal: str
    reason: str
    since: Time


class Release(msgspec.Struct, frozen=True):
    """The last operator release of a hold (the override)."""

    reason: str
    by: str
    at: Time
    held_for: str


class Quota(msgspec.Struct, frozen=True):
    """The daily quota and warm-up cap as the last reservation of any node saw them."""

    daily_limit: Annotated[
        int | None,
        msgspec.Meta(
            description="daily_quota or the account's Max24HourSend, the one with less room left (null: none)"
        ),
    ]
    warmup_day: Annotated[int | None, msgspec.Meta(description="the warm-up's day number (null: none)")]
    warmup_limit: Annotated[int | None, msgspec.Meta(description="today's warm-up cap (null: none)")]
    reserved_24h: Annotated[
        int,
        msgspec.Meta(
            description="counted against daily_limit over the rolling 24 hours: what the nodes reserved, "
            "and against Max24HourSend what the account sent elsewhere too"
        ),
    ]
    reserved_today: Annotated[int, msgspec.Meta(description="reserved since today's UTC midnight")]
    exhausted_until: Annotated[
        Time | None, msgspec.Meta(description="used up: campaigns wait until then (else null)")
    ]
    exhausted_reason: Annotated[str | None, msgspec.Meta(description="which limit, with its figures")]
    updated_at: Time


class ProviderStatus(msgspec.Struct, frozen=True):
    """A provider account over the rolling 24 hours (since its last release), across nodes."""

    name: str
    sent: int
    hard_bounced: int
    complained: int
    blocked: int
    rejected: int  # emails an SMTP server refused (failed); the rates are over sent + rejected
    bounce_rate: float
    complaint_rate: float
    blocked_rate: float
    limits: Limits
    hold: Hold | None
    last_release: Release | None
    quota: Quota | None


class ProviderList(msgspec.Struct, frozen=True):
    """Every configured provider, and any other a campaign or a hold names."""

    items: list[ProviderStatus]


class ResumeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Release a held provider: why (required), and who (recorded; default "api")."""

    reason: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=campaigns.MAX_REASON_LENGTH, pattern=decoding.NO_NUL),
    ]
    by: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=decoding.NO_NUL)] = "api"


ResumeExample = Annotated[ResumeBody, msgspec.Meta(examples=[{"reason": "list cleaned, ticket 123"}])]


class Released(msgspec.Struct, frozen=True):
    """The hold released and the campaigns it had paused, resumed."""

    provider: ProviderStatus
    released: Hold
    resumed: list[int]
