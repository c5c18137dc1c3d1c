"""Email providers: one module each, behind :class:`mailerd.providers.base.Provider`."""

from __future__ import annotations

from mailerd.config import Config, ProviderConfig
from mailerd.providers.base import Provider
from mailerd.providers.webhooks import WebhookHandler


def create(config: ProviderConfig) -> Provider:
    """Build the provider a ``[providers.NAME]`` section describes."""
    if config.kind in ("ses", "sink"):
        from mailerd.providers import ses  # each provider loads only if configured

        return ses.SesProvider(config)
    raise NotImplementedError(f"provider kind {config.kind!r} is not implemented yet")


def create_webhook_handlers(config: Config) -> dict[str, WebhookHandler]:
    """The webhook handler of every provider, keyed by the path segment of ``/webhooks/NAME``."""
    from mailerd.providers import mailgun, postmark, sendgrid, ses

    hooks = config.webhooks
    handlers: list[WebhookHandler] = [
        ses.SnsWebhook(hooks.ses),
        sendgrid.SendgridWebhook(hooks.sendgrid),
        mailgun.MailgunWebhook(hooks.mailgun),
        postmark.PostmarkWebhook(hooks.postmark),
    ]
    return {handler.provider: handler for handler in handlers}
