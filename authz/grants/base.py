"""The grant-store contract, and what every store shares: minting tokens, hashing them with
the server's key, and verifying a presented token in constant time.

A grant is a labelled bearer token for one MCP client or automation (`alice-laptop`,
`ci-runner`). The token is shown once, when it is minted; stores keep only its HMAC-SHA256
under a key of the server's (`--grant-key-file`), so a copy of the store cannot be turned
back into tokens, nor tested against guesses without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

TOKEN_PREFIX: Final = "mcpa_"  # noqa: S105 - the tokens' visible prefix, not a secret
# 32 random bytes, URL-safe base64 without padding.
_TOKEN = re.compile(r"mcpa_[A-Za-z0-9_-]{43}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
MIN_KEY_BYTES: Final = 32
# A policy a grant carries is a document like the server's; bounded like any client input.
MAX_POLICY_BYTES: Final = 1 << 20


class GrantError(ValueError):
    """An operator's request that cannot be done: a bad label or policy choice."""


class GrantExistsError(GrantError):
    """The label is taken."""


class GrantNotFoundError(GrantError):
    """No grant has the label."""


@dataclass(frozen=True, slots=True)
class Grant:
    label: str
    # HMAC-SHA256 of the token under the server's key, hex.
    digest: str
    # Whole seconds since the epoch (Redis's Lua JSON keeps 14 digits of a float).
    created_at: int
    rotated_at: int | None = None
    # The grant's own policy document (the text of `grants create --policy FILE`), or the
    # name of a grant of the server's policy (`--grant NAME`); neither: the server's policy.
    policy_text: str | None = None
    policy_grant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grant:
        return cls(**data)


class GrantStore(Protocol):
    """Where grants live; every method is one atomic step, and `by_digest` runs per request."""

    async def by_digest(self, digest: str) -> Grant | None: ...
    async def add(self, grant: Grant) -> None: ...
    async def get(self, label: str) -> Grant | None: ...
    async def all(self) -> Sequence[Grant]: ...
    async def replace_digest(self, label: str, digest: str, at: int) -> Grant: ...
    async def remove(self, label: str) -> Grant: ...
    async def close(self) -> None: ...


class GrantKey:
    """The server's key for token hashes (`--grant-key-file`)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"the grant key must be at least {MIN_KEY_BYTES} bytes (openssl rand -hex 32)"
            )
        self._key = key

    @classmethod
    def load(cls, path: Path) -> GrantKey:
        try:
            return cls(path.read_bytes().strip())
        except OSError as e:
            raise ValueError(f"cannot read the grant key file {path}: {e.strerror}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()


def well_formed(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


class Grants:
    """Mint, rotate, revoke and verify grants on one store."""

    def __init__(
        self, store: GrantStore, key: GrantKey, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._key = key
        self._clock = clock

    async def verify(self, token: str) -> Grant | None:
        """The grant a presented token stands for; None for a malformed, unknown or revoked
        one. Looked up on every request, so a revocation holds from the next request on."""
        if not well_formed(token):
            return None
        digest = self._key.digest(token)
        grant = await self._store.by_digest(digest)
        if grant is None or not hmac.compare_digest(grant.digest, digest):
            return None
        return grant

    async def create(
        self, label: str, policy_text: str | None = None, policy_grant: str | None = None
    ) -> tuple[Grant, str]:
        """A new grant and its token (shown this once)."""
        if not LABEL.fullmatch(label):
            raise GrantError(
                f"label {label!r} must be 1 to 64 letters, digits or ._@:- (starting with a "
                "letter or digit)"
            )
        if policy_text is not None and policy_grant is not None:
            raise GrantError("give a grant its own policy or a grant name, not both")
        if policy_text is not None and len(policy_text.encode()) > MAX_POLICY_BYTES:
            raise GrantError(f"a grant's policy is limited to {MAX_POLICY_BYTES} bytes")
        token = new_token()
        digest, now = self._key.digest(token), int(self._clock())
        grant = Grant(label, digest, now, None, policy_text, policy_grant)
        await self._store.add(grant)
        return grant, token

    async def rotate(self, label: str) -> tuple[Grant, str]:
        """A new token for the grant; the old one stops working at once."""
        token = new_token()
        grant = await self._store.replace_digest(label, self._key.digest(token), int(self._clock()))
        return grant, token

    async def revoke(self, label: str) -> Grant:
        return await self._store.remove(label)

    async def list(self) -> Sequence[Grant]:
        return sorted(await self._store.all(), key=lambda g: g.label)

    async def close(self) -> None:
        await self._store.close()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def unknown(label: str) -> GrantError:
    return GrantNotFoundError(f"no grant labelled {label!r}")


def taken(label: str) -> GrantError:
    return GrantExistsError(f"a grant labelled {label!r} exists: rotate or revoke it instead")


def rotated(grant: Grant, digest: str, at: int) -> Grant:
    return replace(grant, digest=digest, rotated_at=at)
