"""Who may do what on the admin side: PolicyLayer's roles (viewer, policy_manager, admin on a
ladder) plus approver, who decides approval requests.

An admin token's role comes from its `role=` claim in the admin tokens file; a token without
one is an admin, as every token was before roles existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class Permission(StrEnum):
    READ = "read"
    DECIDE_APPROVALS = "decide_approvals"
    MANAGE_GRANTS = "manage_grants"
    MANAGE_POLICIES = "manage_policies"
    RESET_COUNTERS = "reset_counters"


class Role(StrEnum):
    VIEWER = "viewer"
    APPROVER = "approver"
    POLICY_MANAGER = "policy_manager"
    ADMIN = "admin"


ROLE_CLAIM = "role"

PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.APPROVER: frozenset({Permission.READ, Permission.DECIDE_APPROVALS}),
    Role.POLICY_MANAGER: frozenset(
        {
            Permission.READ,
            Permission.MANAGE_GRANTS,
            Permission.MANAGE_POLICIES,
            Permission.RESET_COUNTERS,
        }
    ),
    Role.ADMIN: frozenset(Permission),
}


def roles_of(claims: Mapping[str, Iterable[str]]) -> frozenset[Role]:
    """The roles an operator's claims name; unknown names grant nothing, no claim is admin."""
    named = list(claims.get(ROLE_CLAIM, ()))
    if not named:
        return frozenset({Role.ADMIN})
    return frozenset(Role(n) for n in named if n in Role.__members__.values())


def may(claims: Mapping[str, Iterable[str]], permission: Permission) -> bool:
    return any(permission in PERMISSIONS[role] for role in roles_of(claims))
