"""Each provider's answers as outcomes (the tables in the modules' docstrings), pure."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from mailerd.importer.parsing import is_valid_email
from mailerd.models import (
    HaltError,
    Outcome,
    PermanentError,
    RecipientResult,
    RetryableError,
    UncertainError,
)
from mailerd.providers import api_call, compose, mailgun, postmark, sendgrid, ses, smtp


def answer(status: int, body: bytes = b"", **headers: str) -> api_call.Answer:
    return api_call.Answer(status, CIMultiDict(headers), body)


def test_sendgrid_answers() -> None:
    assert sendgrid.classify(answer(202)) is None
    throttled = sendgrid.classify(answer(429, **{"X-RateLimit-Reset": "1000"}), now=990.0)
    assert isinstance(throttled, RetryableError) and throttled.retry_after == 10.0
    later = sendgrid.classify(answer(503, **{"Retry-After": "7"}))
    assert isinstance(later, RetryableError) and later.retry_after == 7.0
    assert isinstance(sendgrid.classify(answer(401)), HaltError)
    assert isinstance(sendgrid.classify(answer(403)), HaltError)
    refused = sendgrid.classify(
        answer(400, b'{"errors": [{"message": "Invalid email", "field": "personalizations.0.to"}]}')
    )
    assert isinstance(refused, PermanentError)
    assert refused.reason == "HTTP 400: personalizations.0.to: Invalid email"
    assert isinstance(sendgrid.classify(answer(413, b"too big")), PermanentError)


def test_sendgrid_region_selects_the_endpoint() -> None:
    from mailerd.config import ConfigError, ProviderConfig

    assert sendgrid.endpoint_for(ProviderConfig(kind="sendgrid", region="eu")) == sendgrid.EU_ENDPOINT
    assert sendgrid.endpoint_for(ProviderConfig(kind="sendgrid")) == sendgrid.GLOBAL_ENDPOINT
    assert mailgun.endpoint_for(ProviderConfig(kind="mailgun", region="eu")) == mailgun.EU_ENDPOINT
    with pytest.raises(ConfigError, match="region"):
        mailgun.endpoint_for(ProviderConfig(name="mg", kind="mailgun", region="ap-south-1"))


def test_mailgun_answers() -> None:
    assert mailgun.classify(answer(200, b'{"id": "<x@mg>", "message": "Queued. Thank you."}')) is None
    assert mailgun.message_id(answer(200, b'{"id": "<x@mg>"}')) == "x@mg"
    for status in (429, 500, 502):
        assert isinstance(mailgun.classify(answer(status)), RetryableError)
    for status in (401, 403, 404):
        assert isinstance(mailgun.classify(answer(status)), HaltError)
    refused = mailgun.classify(answer(400, b'{"message": "to parameter is not a valid address"}'))
    assert isinstance(refused, PermanentError) and "not a valid address" in refused.reason


def test_postmark_per_message_codes() -> None:
    results = postmark.parse_results(
        [
            {"ErrorCode": 0, "MessageID": "m1"},
            {"ErrorCode": 406, "Message": "Inactive recipient"},
            {"ErrorCode": 429, "Message": "Rate limit"},
            {"ErrorCode": 300, "Message": "Invalid email request"},
            {"ErrorCode": 412, "Message": "Account is Pending"},
        ],
        6,
    )
    assert [r.outcome for r in results] == [
        Outcome.SENT,
        Outcome.FAILED,
        Outcome.RETRY,
        Outcome.FAILED,
        Outcome.RETRY,  # a halting code beside a sent message: retried (the retry then halts)
        Outcome.UNKNOWN,  # no answer: Postmark may have sent it, never retried or failed
    ]
    with pytest.raises(HaltError, match="412"):
        postmark.parse_results([{"ErrorCode": 412, "Message": "Account is Pending"}] * 2, 2)


def test_postmark_whole_call_errors() -> None:
    assert isinstance(postmark.classify_error(answer(401, b'{"ErrorCode": 10}')), HaltError)
    assert isinstance(postmark.classify_error(answer(422, b'{"ErrorCode": 405, "Message": "x"}')), HaltError)
    assert isinstance(
        postmark.classify_error(answer(422, b'{"ErrorCode": 402, "Message": "x"}')), PermanentError
    )
    assert isinstance(postmark.classify_error(answer(429, b'{"ErrorCode": 429}')), RetryableError)
    assert isinstance(postmark.classify_error(answer(503)), RetryableError)


def test_smtp_replies() -> None:
    assert smtp.classify_reply(451, "4.7.1 try later").outcome is Outcome.RETRY
    assert smtp.classify_reply(550, "5.1.1 user unknown") == RecipientResult(
        Outcome.FAILED, error="550 5.1.1 user unknown", smtp_code=550
    )


def test_combined_calls() -> None:
    sent = [RecipientResult(Outcome.SENT, "m")]
    results = api_call.combine(
        [
            ([0], sent),
            ([1], UncertainError("reset")),
            ([2], RetryableError("429", 3.0)),
            ([3], HaltError("x")),
        ],
        4,
        whole=True,
        resend_uncertain=False,
    )
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.UNKNOWN, Outcome.RETRY, Outcome.RETRY]
    resent = api_call.combine(
        [([0], sent), ([1], UncertainError("reset"))], 2, whole=True, resend_uncertain=True
    )
    assert resent[1].outcome is Outcome.RETRY
    with pytest.raises(RetryableError) as caught:
        api_call.combine(
            [([0], RetryableError("429", 2.0)), ([1], RetryableError("429", 5.0))],
            2,
            whole=True,
            resend_uncertain=False,
        )
    assert caught.value.retry_after == 5.0
    with pytest.raises(UncertainError):
        api_call.combine([([0, 1], UncertainError("timeout"))], 2, whole=True, resend_uncertain=False)
    # some leads of the batch failed before any call (a render failure): only the calls' own
    # recipients are unknown, and the others keep their outcome
    part = api_call.combine([([0, 2], UncertainError("timeout"))], 3, whole=False, resend_uncertain=False)
    assert [r.outcome for r in part[::2]] == [Outcome.UNKNOWN, Outcome.UNKNOWN]


def test_an_uncertain_call_of_the_whole_batch_is_raised_and_of_part_of_it_is_its_recipients() -> None:
    error = UncertainError("reset")
    with pytest.raises(UncertainError) as caught:
        api_call.uncertain_part(error, 3, whole=True, resend_uncertain=False)
    assert caught.value is error
    unknown = api_call.uncertain_part(error, 2, whole=False, resend_uncertain=False)
    assert unknown == [RecipientResult(Outcome.UNKNOWN, error="uncertain: reset")] * 2
    resent = api_call.uncertain_part(error, 2, whole=False, resend_uncertain=True)
    assert resent == [RecipientResult(Outcome.RETRY, error="reset")] * 2


@pytest.mark.parametrize(
    "entry", [None, "x", {"ErrorCode": [406]}, {"ErrorCode": {"a": 1}}, {"ErrorCode": False}]
)
def test_a_postmark_answer_that_cannot_be_read_is_unknown(entry: object) -> None:
    # a list or an object as ErrorCode crashed the daemon (unhashable); false counted as 0: sent
    assert [r.outcome for r in postmark.parse_results([entry], 1)] == [Outcome.UNKNOWN]
    with pytest.raises(UncertainError):
        postmark.parse_results({"not": "a list"}, 1)


def test_postmark_403_halts_as_every_other_provider() -> None:
    assert isinstance(postmark.classify_error(answer(403, b"<html>forbidden</html>")), HaltError)


@pytest.mark.parametrize(
    ("status", "body", "sent"),
    [
        (202, b"", True),
        (200, b"", True),  # sandbox mode
        (200, b"<html>a proxy's page</html>", False),
        (202, b'{"errors": [{"message": "x"}]}', False),
        (200, b"null", False),
        (204, b"", False),
    ],
)
def test_sendgrid_success_is_its_documented_answer_only(status: int, body: bytes, sent: bool) -> None:
    # every 2xx counted as sent before, a proxy's page or an error document included
    error = sendgrid.classify(answer(status, body))
    assert error is None if sent else isinstance(error, UncertainError)


@pytest.mark.parametrize(
    ("status", "body", "sent"),
    [
        (200, b'{"id": "<20240101.1@mg.example.com>", "message": "Queued. Thank you."}', True),
        (200, b"{}", False),
        (200, b'{"id": ["x"]}', False),
        (200, b"<html></html>", False),
        (201, b'{"id": "<x@y>"}', False),
    ],
)
def test_mailgun_success_needs_its_message_id(status: int, body: bytes, sent: bool) -> None:
    error = mailgun.classify(answer(status, body))
    assert error is None if sent else isinstance(error, UncertainError)


@pytest.mark.parametrize(
    ("address", "mailbox"),
    [
        ("a.b+tag@ex-ample.co.uk", True),
        ("josé@bücher.de", True),
        ("lead.example.com", False),
        ("a b@example.com", False),
        ("a@example.com, b@example.com", False),
        ("a@example.com;b@example.com", False),
        ("Bob <b@example.com>", False),
        ("a@b@example.com", False),
        ("@example.com", False),
        ("a@", False),
        ("a@example.com\x00", False),
    ],
)
def test_a_lead_address_is_one_bare_mailbox(address: str, mailbox: bool) -> None:
    assert compose.is_mailbox(address) is mailbox


def test_ses_checks_the_address_again_as_it_sends_it() -> None:
    # IDNA maps U+037A to a space: the lead's address passes, its A-label form is two words,
    # for which SES refuses the whole call
    lead = "ab@ex\u037aample.com"
    assert is_valid_email(lead) and compose.is_mailbox(lead)
    refused = ses._destination(lead)
    assert isinstance(refused, RecipientResult) and refused.outcome is Outcome.FAILED
    assert refused.error == compose.NOT_A_MAILBOX
    assert ses._destination("ann@bücher.de") == "ann@xn--bcher-kva.de"
