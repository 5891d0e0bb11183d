"""The console's roles file: who holds which role, and every mistake named with its fix."""

from __future__ import annotations

from typing import Any

import pytest

from authz.admin.roles import Role
from authz.console.roles import RoleMap, RolesFileError


def test_identities_and_groups_map_to_roles() -> None:
    roles = RoleMap.parse(
        {"roles": {"approver": ["alice", "group:treasury"], "admin": ["ada"]}}, "roles.yaml"
    )
    assert roles.roles("alice", []) == {Role.APPROVER}
    assert roles.roles("bob", ["treasury", "eng"]) == {Role.APPROVER}
    assert roles.roles("ada", ["treasury"]) == {Role.ADMIN, Role.APPROVER}
    # A group is never an identity, nor the other way round.
    assert roles.roles("group:treasury", []) == {Role.APPROVER}
    assert roles.roles("treasury", []) == frozenset()
    assert roles.claims("bob", ["treasury"]) == {"role": ["approver"], "groups": ["treasury"]}
    assert roles.claims("mallory", []) == {"role": [], "groups": []}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "expected a mapping"),
        ({"roles": {}}, "/roles: must map roles"),
        ({"roles": {"superuser": ["a"]}}, "/roles/superuser: unknown role"),
        ({"roles": {"viewer": "a"}}, "/roles/viewer: must be a list"),
        ({"roles": {"viewer": ["a"]}, "group_claim": "g"}, "/group_claim: unknown key"),
        ({"roles": {"viewer": ["a"]}, "identity_claim": ""}, "/identity_claim: must be"),
    ],
)
def test_mistakes_name_the_file_the_path_and_the_fix(data: Any, problem: str) -> None:
    with pytest.raises(RolesFileError, match=problem) as info:
        RoleMap.parse(data, "roles.yaml")
    assert str(info.value).startswith("roles.yaml")
