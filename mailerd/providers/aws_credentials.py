"""AWS credentials for SES: explicit keys, or the standard chain botocore implements.

Without ``access_key_id``/``secret_access_key`` the provider resolves credentials the way every
AWS SDK does (botocore's credential resolver): environment variables, the shared credentials
and config files (``profile``, else ``AWS_PROFILE``, else ``default``; assume-role profiles
included), web identity (EKS service accounts: ``AWS_WEB_IDENTITY_TOKEN_FILE``), container
credentials (ECS, EKS Pod Identity) and the EC2 instance metadata service. botocore reads the
``AWS_*`` environment itself: those variables are the AWS SDK's own convention, not mailerd
settings.

Temporary credentials are refreshed before they expire: the chain returns botocore's
``RefreshableCredentials``; whenever they are within botocore's advisory window (15 minutes), the
refresh (an HTTP call to STS or a metadata service) runs in a worker thread, never on the event
loop, and every request is signed with the credentials of that moment (access key, secret and
session token). Resolving the chain is blocking I/O too (files, metadata), so it also runs in a
thread, once, on first use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.session
import structlog
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials

from mailerd.config import ProviderConfig
from mailerd.models import HaltError

log = structlog.get_logger(__name__)

SINK_CREDENTIALS = ReadOnlyCredentials("AKIDMAILERDSINK", "mailerd-sink-dummy-secret", None)


class AwsCredentials:
    """The credentials to sign the next request with; see the module docstring."""

    def __init__(self, config: ProviderConfig) -> None:
        self._profile = config.profile or None
        self._static: ReadOnlyCredentials | None = None
        self._resolved: Credentials | None = None
        self._lock = asyncio.Lock()
        key, secret = config.access_key_id, config.secret_access_key
        if key is not None and secret is not None:
            self._static = ReadOnlyCredentials(key.reveal(), secret.reveal(), None)
        elif config.kind == "sink":
            self._static = SINK_CREDENTIALS

    @property
    def from_chain(self) -> bool:
        return self._static is None

    async def current(self) -> ReadOnlyCredentials:
        """Frozen credentials valid for at least the next request (refreshed off the loop)."""
        if self._static is not None:
            return self._static
        credentials = self._resolved or await self._resolve()
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            frozen: ReadOnlyCredentials = await asyncio.to_thread(credentials.get_frozen_credentials)
            log.info("aws_credentials_refreshed", method=credentials.method)
            return frozen
        result: ReadOnlyCredentials = credentials.get_frozen_credentials()
        return result

    async def _resolve(self) -> Credentials:
        async with self._lock:
            if self._resolved is None:
                found = await asyncio.to_thread(_chain, self._profile)
                if found is None:
                    raise HaltError(
                        "no AWS credentials: set access_key_id and secret_access_key, or provide them "
                        "through the AWS credential chain (environment, shared credentials file, "
                        "instance or container role, web identity)"
                    )
                log.info("aws_credentials_resolved", method=found.method, profile=self._profile)
                self._resolved = found
            return self._resolved

    def use(self, credentials: Credentials) -> None:
        """Use these (e.g. refreshable test credentials) instead of resolving the chain."""
        self._resolved = credentials


def _chain(profile: str | None) -> Any:
    """botocore's default credential resolver (blocking: files, metadata endpoints)."""
    session = botocore.session.Session(profile=profile)
    return session.get_credentials()
