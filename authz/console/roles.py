"""Who is what in the console: the roles file, mapping people and groups to admin roles.

```yaml
identity_claim: email        # the OIDC claim naming the person (default: email)
groups_claim: groups         # the OIDC claim listing their groups (default: groups)
groups_header: x-forwarded-groups  # with --console-trusted-header: comma-separated groups
roles:
  approver: [alice@example.com, "group:finance"]
  viewer: ["group:engineering"]
```

A name is an identity or `group:NAME`. The roles are those of the admin API
(authz/admin/roles.py). Someone the file gives no role is not signed in: the admin side's
"no role claim means admin" rule belongs to its tokens file, never to a person who merely
holds an account at the identity provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from authz.admin.roles import ROLE_CLAIM, Role

GROUP_PREFIX: Final = "group:"
_DEFAULTS: Final = {
    "identity_claim": "email",
    "groups_claim": "groups",
    "groups_header": "x-forwarded-groups",
}
_KEYS: Final = frozenset({*_DEFAULTS, "roles"})


class RolesFileError(ValueError):
    """A roles file that cannot be used: names the file, the path in it and the fix."""


@dataclass(frozen=True, slots=True)
class RoleMap:
    # Role -> identities and `group:NAME`s holding it.
    members: Mapping[Role, frozenset[str]]
    identity_claim: str = _DEFAULTS["identity_claim"]
    groups_claim: str = _DEFAULTS["groups_claim"]
    groups_header: str = _DEFAULTS["groups_header"]

    @classmethod
    def load(cls, path: Path) -> RoleMap:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise RolesFileError(
                f"cannot read the console roles file {path}: {e.strerror}"
            ) from None
        except yaml.YAMLError as e:
            raise RolesFileError(f"{path}: not YAML: {e}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, source: str) -> RoleMap:
        if not isinstance(data, dict):
            raise RolesFileError(f"{source}: expected a mapping with a `roles` key")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise RolesFileError(
                f"{source}: /{unknown[0]}: unknown key; the keys are {', '.join(sorted(_KEYS))}"
            )
        strings = {k: data.get(k, default) for k, default in _DEFAULTS.items()}
        for key, value in strings.items():
            if not isinstance(value, str) or not value:
                raise RolesFileError(f"{source}: /{key}: must be a non-empty string")
        return cls(_members(data.get("roles"), source), **strings)

    def roles(self, identity: str, groups: Iterable[str]) -> frozenset[Role]:
        names = {identity, *(GROUP_PREFIX + g for g in groups)}
        return frozenset(role for role, members in self.members.items() if names & members)

    def claims(self, identity: str, groups: Iterable[str]) -> dict[str, list[str]]:
        """The operator's claims for the admin actions: their roles and their groups."""
        groups = sorted(set(groups))
        roles = sorted(r.value for r in self.roles(identity, groups))
        return {ROLE_CLAIM: roles, self.groups_claim: groups}


def _members(roles: Any, source: str) -> dict[Role, frozenset[str]]:
    if not isinstance(roles, dict) or not roles:
        raise RolesFileError(
            f"{source}: /roles: must map roles ({', '.join(r.value for r in Role)}) to lists "
            "of identities and group:NAME entries"
        )
    members: dict[Role, frozenset[str]] = {}
    for name, names in roles.items():
        if name not in Role.__members__.values():
            raise RolesFileError(
                f"{source}: /roles/{name}: unknown role; use one of "
                f"{', '.join(r.value for r in Role)}"
            )
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise RolesFileError(
                f"{source}: /roles/{name}: must be a list of identities and group:NAME entries"
            )
        members[Role(name)] = frozenset(names)
    return members
