"""The one interface every email provider implements."""

from __future__ import annotations

from typing import Protocol

from mailerd.models import Batch, Campaign, RecipientResult, SendQuota


class Provider(Protocol):
    """Sends batches for campaigns; one instance per configured provider, shared by campaigns.

    ``send`` returns one :class:`RecipientResult` per lead of the batch, in order, or raises a
    :class:`~mailerd.models.ProviderError` subclass when the whole call failed.
    """

    name: str
    max_batch_size: int

    async def prepare(self, campaign: Campaign) -> None:
        """Get ready to send ``campaign`` (e.g. create its provider-side template); idempotent."""

    async def send(self, batch: Batch) -> list[RecipientResult]:
        """Send one batch; per-recipient outcomes in the order of ``batch.leads``."""

    def forget(self, campaign_id: int) -> None:
        """This node sends nothing of the campaign now: drop what was prepared for it."""

    async def send_quota(self) -> SendQuota | None:
        """The account's own send rate and daily quota, if the provider publishes them."""

    async def close(self) -> None:
        """Release connections."""
