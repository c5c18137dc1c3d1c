"""Email providers: one module each, behind :class:`mailerd.providers.base.Provider`."""

from __future__ import annotations

from collections.abc import Callable

from mailerd.config import Config, ConfigError, ContentConfig, ProviderConfig
from mailerd.models import Campaign, Lead
from mailerd.providers.base import Provider
from mailerd.providers.webhooks import WebhookHandler


def create(
    config: ProviderConfig,
    unsubscribe: Callable[[Campaign, Lead], str] | None = None,
    content_limits: ContentConfig | None = None,
) -> Provider:
    """Build the provider a ``[providers.NAME]`` section describes.

    ``unsubscribe`` builds each email's one-click URL (List-Unsubscribe, ``{{ unsubscribe_url }}``);
    ``content_limits`` is the template budget of every render (``[content]``). Each provider module loads
    only when configured. A key the kind needs and lacks is a :class:`ConfigError` naming it.
    """
    if config.kind in ("ses", "sink"):
        from mailerd.providers import ses

        return ses.SesProvider(config, unsubscribe=unsubscribe, content_limits=content_limits)
    if config.kind == "sendgrid":
        from mailerd.providers import sendgrid

        return sendgrid.SendgridProvider(config, unsubscribe=unsubscribe, content_limits=content_limits)
    if config.kind == "mailgun":
        from mailerd.providers import mailgun

        return mailgun.MailgunProvider(config, unsubscribe=unsubscribe, content_limits=content_limits)
    if config.kind == "postmark":
        from mailerd.providers import postmark

        return postmark.PostmarkProvider(config, unsubscribe=unsubscribe, content_limits=content_limits)
    if config.kind == "smtp":
        from mailerd.providers import smtp

        return smtp.SmtpProvider(config, unsubscribe=unsubscribe, content_limits=content_limits)
    raise ConfigError(f"[providers.{config.name}] kind: unknown provider kind {config.kind!r}")


def create_webhook_handlers(config: Config) -> dict[str, WebhookHandler]:
    """The webhook handler of every provider, keyed by the path segment of ``/webhooks/NAME``."""
    from mailerd.providers import mailgun_webhook, postmark_webhook, sendgrid_webhook, ses_webhook

    hooks = config.webhooks
    handlers: list[WebhookHandler] = [
        ses_webhook.SnsWebhook(hooks.ses),
        sendgrid_webhook.SendgridWebhook(hooks.sendgrid),
        mailgun_webhook.MailgunWebhook(hooks.mailgun),
        postmark_webhook.PostmarkWebhook(hooks.postmark),
    ]
    return {handler.provider: handler for handler in handlers}
