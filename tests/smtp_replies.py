"""Real receivers' refusals of RCPT, as their SMTP servers word them (shared by the unit and
integration tests of synchronous SMTP rejections): the reply, and the bounce class it must get."""

from __future__ import annotations

from typing import Final

# name: (reply line as the server sends it, expected bounce class)
REPLIES: Final[dict[str, tuple[str, str]]] = {
    "gmail_no_such_user": (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "https://support.google.com/mail/?p=NoSuchUser",
        "invalid_recipient",
    ),
    "gmail_unauthenticated": (
        "550 5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail "
        "users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM. "
        "For this message, DKIM checks did not pass and SPF check for [example.com] did not pass "
        "with ip: [192.0.2.1]. https://support.google.com/mail/answer/81126#authentication",
        "auth_failure",
    ),
    "gmail_unusual_rate": (
        "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your "
        "IP address. To protect our users from spam, mail sent from your IP address has been "
        "temporarily rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError",
        "reputation_block",
    ),
    "outlook_block_list": (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
        "service provider since part of their network is on our block list (S3140). You can also "
        "refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "reputation_block",
    ),
    "outlook_authentication_level": (
        "550 5.7.515 Access denied, sending domain example.com does not meet the required "
        "authentication level.",
        "auth_failure",
    ),
    "outlook_mailbox_unavailable": (
        "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)",
        "invalid_recipient",
    ),
    "yahoo_deferred": (
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "reputation_block",
    ),
    "yahoo_spamhaus": (
        "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in "
        "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        "reputation_block",
    ),
    "postfix_user_unknown": (
        "550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table",
        "invalid_recipient",
    ),
    "postfix_mailbox_full": (
        "552 5.2.2 <{address}>: Recipient address rejected: Mailbox full",
        "mailbox_full",
    ),
    "postfix_greylisted": (
        "450 4.2.0 <{address}>: Recipient address rejected: Greylisted, see "
        "https://postgrey.schweikert.ch/help/example.com.html",
        "transient",
    ),
}


def reply(name: str, address: str) -> str:
    """The reply ``name`` as the server words it for ``address``."""
    return REPLIES[name][0].format(address=address)
