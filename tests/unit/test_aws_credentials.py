"""SES credentials without static keys: botocore's chain (environment, shared credentials file and
profile), and temporary credentials refreshed before they expire, off the event loop. No network:
the instance metadata lookups are switched off."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from botocore.credentials import RefreshableCredentials

from mailerd.config import ProviderConfig, Secret
from mailerd.models import HaltError
from mailerd.providers import aws_credentials, ses


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A clean AWS environment: nothing from the machine, no metadata service calls."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


async def test_explicit_keys_win() -> None:
    config = ProviderConfig(
        name="ses", kind="ses", access_key_id=Secret("AKIDX"), secret_access_key=Secret("s")
    )
    credentials = aws_credentials.AwsCredentials(config)
    assert not credentials.from_chain
    assert (await credentials.current()).access_key == "AKIDX"


async def test_environment_credentials_with_a_session_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    frozen = await aws_credentials.AwsCredentials(ProviderConfig(name="ses", kind="ses")).current()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AKIDENV", "env-secret", "env-token")


async def test_shared_credentials_file_and_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n"
        "[mailerd]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    default = await aws_credentials.AwsCredentials(ProviderConfig(name="ses", kind="ses")).current()
    assert default.access_key == "AKIDDEFAULT"
    named = await aws_credentials.AwsCredentials(
        ProviderConfig(name="ses", kind="ses", profile="mailerd")
    ).current()
    assert (named.access_key, named.secret_key) == ("AKIDPROFILE", "profile-secret")


async def test_no_credentials_anywhere_halts_with_a_clear_reason() -> None:
    with pytest.raises(HaltError, match="no AWS credentials"):
        await aws_credentials.AwsCredentials(ProviderConfig(name="ses", kind="ses")).current()


async def test_temporary_credentials_are_refreshed_in_a_thread_before_they_expire() -> None:
    loop_thread = threading.get_ident()
    refreshed_in: list[int] = []
    now = dt.datetime.now(dt.UTC)

    def refresh() -> dict[str, str]:
        refreshed_in.append(threading.get_ident())
        expiry = now + dt.timedelta(hours=1)
        return {
            "access_key": f"AKIDTEMP{len(refreshed_in)}",
            "secret_key": "temp-secret",
            "token": "temp-token",
            "expiry_time": expiry.isoformat(),
        }

    soon = (now + dt.timedelta(minutes=5)).isoformat()  # inside botocore's 15-minute advisory window
    temporary = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDOLD", "secret_key": "old", "token": "old-token", "expiry_time": soon},
        refresh_using=refresh,
        method="test",
    )
    credentials = aws_credentials.AwsCredentials(ProviderConfig(name="ses", kind="ses"))
    credentials.use(temporary)
    frozen = await credentials.current()
    assert frozen.access_key == "AKIDTEMP1"
    assert refreshed_in and refreshed_in[0] != loop_thread
    again = await credentials.current()  # valid for an hour now: no second refresh
    assert again.access_key == "AKIDTEMP1" and len(refreshed_in) == 1


async def test_ses_signs_with_the_chain_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSIGN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sign-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "sign-token")
    provider = ses.SesProvider(ProviderConfig(name="ses", kind="ses", region="eu-west-1"))
    headers = provider._sign(
        "POST",
        "https://email.eu-west-1.amazonaws.com/v2/email/account",
        b"{}",
        await provider._credentials.current(),
    )
    assert "Credential=AKIDSIGN/" in headers["Authorization"]
    assert "/eu-west-1/ses/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "sign-token"
