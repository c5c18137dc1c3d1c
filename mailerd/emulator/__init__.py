"""Loopback emulators of the email providers: ``mailerd sink``, the demo, tests and benchmarks.

- :mod:`.sink`: the SES v2 API (``SendBulkEmail``, templates, ``GetAccount``) on a local port.
- :mod:`.recorder`: the JSON-lines record of accepted recipients an emulator keeps.
- :mod:`.webhooks`: posts signed bounce and complaint webhooks back to a daemon.
- :mod:`.signer`: what every webhook signer takes (:class:`~.signer.SentEmail`) and offers.
- :mod:`.ses_webhooks`, :mod:`.sendgrid_webhooks`, :mod:`.mailgun_webhooks`,
  :mod:`.postmark_webhooks`: each provider's webhook, written and signed the provider's way.

Production code never imports this package (only the ``sink`` and ``demo`` commands do): the
emulators import the production providers' constants and verification helpers, never the reverse.
"""
