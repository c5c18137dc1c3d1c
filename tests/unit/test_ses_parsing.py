"""SES v2 answers as outcomes and errors: pure functions, no network."""

from __future__ import annotations

import email.utils
import time

import pytest

from mailerd.config import ConfigError, ProviderConfig, Secret
from mailerd.models import (
    HaltError,
    Outcome,
    PermanentError,
    RecipientResult,
    RetryableError,
)
from mailerd.providers import ses


def test_success_carries_the_message_id() -> None:
    assert ses.classify_entry("SUCCESS", None, "m-1") == RecipientResult(Outcome.SENT, "m-1")


@pytest.mark.parametrize("status", ["TRANSIENT_FAILURE", "ACCOUNT_THROTTLED", "TEMPLATE_NOT_FOUND"])
def test_transient_statuses_are_retried(status: str) -> None:
    result = ses.classify_entry(status, "try later")
    assert result == RecipientResult(Outcome.RETRY, error=f"{status}: try later")


@pytest.mark.parametrize("status", ["MESSAGE_REJECTED", "INVALID_PARAMETER", "FAILED", "SOMETHING_NEW", None])
def test_other_statuses_fail_with_status_and_error(status: str | None) -> None:
    result = ses.classify_entry(status, "Address blacklisted.")
    assert result.outcome is Outcome.FAILED
    assert result.error == f"{status}: Address blacklisted."


def test_reason_without_error_text_is_the_status() -> None:
    assert ses.classify_entry("MESSAGE_REJECTED", None).error == "MESSAGE_REJECTED"


def test_parse_results_keeps_order() -> None:
    results = ses.parse_results(
        [
            {"Status": "SUCCESS", "MessageId": "a"},
            {"Status": "MESSAGE_REJECTED", "Error": "virus"},
            {"Status": "TRANSIENT_FAILURE"},
        ],
        3,
    )
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.RETRY]
    assert results[0].message_id == "a"


@pytest.mark.parametrize("status", sorted(ses.HALT_STATUSES))
def test_halting_status_without_any_success_halts(status: str) -> None:
    with pytest.raises(HaltError, match=f"^{status}: paused$"):
        ses.parse_results([{"Status": status, "Error": "paused"}] * 2, 2)


def test_halting_status_beside_a_success_is_retried_not_halted() -> None:
    # Raising would lose the sent recipient's outcome and send it again later.
    results = ses.parse_results(
        [{"Status": "SUCCESS", "MessageId": "a"}, {"Status": "ACCOUNT_SENDING_PAUSED"}], 2
    )
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY]


def test_missing_or_unreadable_results_are_unknown_never_retried_or_failed() -> None:
    # The call went through: SES may have sent each of them (they were failed before)
    results = ses.parse_results([{"Status": "SUCCESS", "MessageId": "a"}], 3)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.UNKNOWN, Outcome.UNKNOWN]
    odd: list[object] = [None, "SUCCESS", {"Status": ["SUCCESS"]}, {"Status": {"a": 1}}, {"Status": None}]
    assert [r.outcome for r in ses.parse_results(odd, 5)] == [Outcome.UNKNOWN] * 5  # a crash before


def test_a_message_id_that_is_not_text_is_kept_as_text_or_dropped() -> None:
    # a number reached the writer's COPY as an int: the batch's rows were dead-lettered
    results = ses.parse_results(
        [{"Status": "SUCCESS", "MessageId": 123}, {"Status": "SUCCESS", "MessageId": ["x"]}], 2
    )
    assert [r.message_id for r in results] == ["123", None]


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (429, "TooManyRequestsException", RetryableError),
        (429, None, RetryableError),
        (400, "LimitExceededException", RetryableError),
        (500, "InternalServiceErrorException", RetryableError),
        (503, None, RetryableError),
        (404, "NotFoundException", RetryableError),
        (400, "SendingPausedException", HaltError),
        (400, "AccountSuspendedException", HaltError),
        (400, "MailFromDomainNotVerifiedException", HaltError),
        (403, "InvalidSignatureException", HaltError),
        (400, "BadRequestException", PermanentError),
        (400, "MessageRejected", PermanentError),
        (400, "AlreadyExistsException", PermanentError),
        (413, None, PermanentError),
    ],
)
def test_classify_error(status: int, error_type: str | None, expected: type[Exception]) -> None:
    error = ses.classify_error(status, error_type, "why", None)
    assert type(error) is expected
    assert error.reason == f"{error_type or f'HTTP {status}'}: why"


def test_classify_error_keeps_retry_after() -> None:
    error = ses.classify_error(429, "TooManyRequestsException", None, 2.5)
    assert isinstance(error, RetryableError)
    assert error.retry_after == 2.5
    assert error.reason == "TooManyRequestsException"


def test_parse_error_prefers_the_header_and_strips_its_suffix() -> None:
    headers = {
        "x-amzn-ErrorType": "TooManyRequestsException:http://internal.amazon.com/coral/",
        "Retry-After": "3",
    }
    parsed = ses.parse_error(429, headers, b'{"message": "Maximum sending rate exceeded."}')
    assert parsed == ("TooManyRequestsException", "Maximum sending rate exceeded.", 3.0)


def test_parse_error_falls_back_to_the_body_type() -> None:
    body = b'{"__type": "com.amazonaws.sesv2#BadRequestException", "Message": "bad"}'
    assert ses.parse_error(400, {}, body) == ("BadRequestException", "bad", None)


def test_parse_error_of_a_non_json_body() -> None:
    assert ses.parse_error(502, {}, b"<html>Bad Gateway</html>") == (
        None,
        "<html>Bad Gateway</html>",
        None,
    )


def test_retry_after_forms() -> None:
    """An error answer's Retry-After, read by the one parser every provider uses (mailerd.backoff)."""

    def retry_after(value: str | None) -> float | None:
        return ses.parse_error(429, {} if value is None else {"Retry-After": value}, b"")[2]

    assert retry_after(None) is None
    assert retry_after("1.5") == 1.5
    # Not delta-seconds: no floor, the sender's own backoff decides (as it did with the old 0.0).
    assert retry_after("-4") is None
    assert retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after(later) or 0) <= 31


def test_ses_kind_takes_both_keys_or_neither() -> None:
    """Neither key: the AWS credential chain (tests/unit/test_aws_credentials.py); one alone is a
    configuration error naming both."""
    with pytest.raises(ConfigError, match="access_key_id and secret_access_key"):
        ses.SesProvider(ProviderConfig(name="ses", kind="ses", access_key_id=Secret("AKID")))
    assert ses.SesProvider(ProviderConfig(name="ses", kind="ses"))._credentials.from_chain


async def test_sink_kind_allows_missing_credentials_and_has_a_default_endpoint() -> None:
    provider = ses.SesProvider(ProviderConfig(name="loop", kind="sink"))
    assert provider.name == "loop"
    assert provider.max_batch_size == 50
    credentials = await provider._credentials.current()
    headers = provider._sign(
        "POST", "http://127.0.0.1:8026/v2/email/outbound-bulk-emails", b"{}", credentials
    )
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMAILERDSINK/")


async def test_signature_scope_and_signed_headers() -> None:
    config = ProviderConfig(
        name="ses",
        kind="ses",
        region="eu-west-1",
        access_key_id=Secret("AKIDEXAMPLE"),
        secret_access_key=Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    )
    provider = ses.SesProvider(config)
    credentials = await provider._credentials.current()
    headers = provider._sign(
        "GET", "https://email.eu-west-1.amazonaws.com/v2/email/account", b"", credentials
    )
    auth = headers["Authorization"]
    assert "/eu-west-1/ses/aws4_request" in auth
    assert "SignedHeaders=content-type;host;x-amz-date" in auth
    assert set(headers) == {"Content-Type", "X-Amz-Date", "Authorization"}
