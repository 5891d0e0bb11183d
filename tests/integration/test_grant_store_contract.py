"""The GrantStore contract, through `Grants`, against every store: file, Redis, Redis Cluster.

Each test gets two `Grants` on one store as two replicas would hold them (for the file store,
two instances reading one file, as two processes would): what one mints, rotates or revokes,
the other sees on its next lookup.
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authz.grants.base import GrantError, GrantKey, Grants, new_token
from authz.grants.file import FileGrants
from authz.grants.redis import RedisGrants
from tests.conftest import redis_url_for

KEY = GrantKey(b"k" * 32)
Pair = tuple[Grants, Grants]


@pytest.fixture(params=["file", "redis", "cluster"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    if request.param == "file":
        path = tmp_path / "grants.json"
        yield Grants(FileGrants(path), KEY), Grants(FileGrants(path), KEY)
        return
    url = redis_url_for(request)
    prefix = f"grants-{uuid.uuid4().hex}"
    a, b = (Grants(RedisGrants.from_url(url, prefix=prefix, timeout=2.0), KEY) for _ in "ab")
    yield a, b
    await a.close()
    await b.close()


async def test_a_minted_token_verifies_on_every_replica(replicas: Pair) -> None:
    a, b = replicas
    grant, token = await a.create("alice-laptop")
    found = await b.verify(token)
    assert found is not None
    assert (found.label, found.digest) == ("alice-laptop", grant.digest)
    assert token not in found.digest
    assert token not in repr(found.to_dict())


async def test_unknown_and_malformed_tokens_verify_as_nobody(replicas: Pair) -> None:
    a, _ = replicas
    await a.create("ci-runner")
    for token in (new_token(), "", "mcpa_short", "Bearer x", new_token() + "x", "é" * 48):
        assert await a.verify(token) is None


async def test_revocation_holds_on_the_next_lookup_of_the_other_replica(replicas: Pair) -> None:
    a, b = replicas
    _, alice = await a.create("alice-laptop")
    _, ci = await a.create("ci-runner")
    assert await b.verify(alice) is not None
    await a.revoke("alice-laptop")
    assert await b.verify(alice) is None
    assert await b.verify(ci) is not None
    assert [g.label for g in await b.list()] == ["ci-runner"]


async def test_rotation_replaces_the_token_and_keeps_the_grant(replicas: Pair) -> None:
    a, b = replicas
    created, old = await a.create("alice-laptop", policy_grant="finance")
    assert await b.verify(old) is not None
    rotated, new = await a.rotate("alice-laptop")
    assert await b.verify(old) is None
    found = await b.verify(new)
    assert found is not None
    assert (found.label, found.policy_grant, found.created_at) == (
        "alice-laptop",
        "finance",
        created.created_at,
    )
    assert rotated.rotated_at is not None


async def test_labels_are_unique_and_unknown_labels_are_named(replicas: Pair) -> None:
    a, b = replicas
    await a.create("alice-laptop")
    with pytest.raises(GrantError, match="exists"):
        await b.create("alice-laptop")
    for step in (b.rotate, b.revoke):
        with pytest.raises(GrantError, match="no grant labelled 'nobody'"):
            await step("nobody")
    with pytest.raises(GrantError, match="label"):
        await a.create("bad label with spaces")


async def test_a_grant_keeps_its_own_policy(replicas: Pair) -> None:
    a, b = replicas
    text = '{"version": "1", "default": "allow"}'
    _, token = await a.create("bot", policy_text=text)
    found = await b.verify(token)
    assert found is not None
    assert found.policy_text == text


async def test_the_file_store_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "grants.json"
    await Grants(FileGrants(path), KEY).create("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        GrantKey.load(tmp_path / "k")
