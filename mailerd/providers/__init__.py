"""Email providers: one module each, behind :class:`mailerd.providers.base.Provider`."""

from __future__ import annotations

from collections.abc import Callable

from mailerd.config import Config, ProviderConfig
from mailerd.models import Campaign, Lead
from mailerd.providers.base import Provider
from mailerd.providers.webhooks import WebhookHandler


def create(config: ProviderConfig, unsubscribe: Callable[[Campaign, Lead], str] | None = None) -> Provider:
    """Build the provider a ``[providers.NAME]`` section describes.

    ``unsubscribe`` builds each email's one-click URL (List-Unsubscribe, ``{{ unsubscribe_url }}``).
    """
    if config.kind in ("ses", "sink"):
        from mailerd.providers import ses  # each provider loads only if configured

        return ses.SesProvider(config, unsubscribe=unsubscribe)
    raise NotImplementedError(f"provider kind {config.kind!r} is not implemented yet")


def create_webhook_handlers(config: Config) -> dict[str, WebhookHandler]:
    """The webhook handler of every provider, keyed by the path segment of ``/webhooks/NAME``."""
    from mailerd.providers import mailgun, postmark, sendgrid, ses_webhook

    hooks = config.webhooks
    handlers: list[WebhookHandler] = [
        ses_webhook.SnsWebhook(hooks.ses),
        sendgrid.SendgridWebhook(hooks.sendgrid),
        mailgun.MailgunWebhook(hooks.mailgun),
        postmark.PostmarkWebhook(hooks.postmark),
    ]
    return {handler.provider: handler for handler in handlers}
