# -*- test-case-name: tests.test_admin_roles -*-
"""
Roles: what an admin may do on each area of the console, none / view / full.

The areas are the console's pages, and C{actions} (revoke and resend a message), which the
contract rights apart from the trace page that shows them. Three roles are built in and
cannot be changed; an admin with full rights on the admins page makes others, stored in the
database as JSON (area → level). An area a stored role does not name is C{none}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

NONE, VIEW, FULL = "none", "view", "full"
LEVELS = (NONE, VIEW, FULL)
_RANK = {NONE: 0, VIEW: 1, FULL: 2}

#: The rights areas, in the console's menu order.
AREAS = (
    "overview",
    "trace",
    "actions",
    "queue",
    "sms",
    "phones",
    "settings",
    "admins",
    "audit",
)

BUILT_IN: dict[str, dict[str, str]] = {
    "admin": {area: FULL for area in AREAS},
    "helpdesk": {
        "overview": VIEW,
        "trace": VIEW,
        "queue": VIEW,
        "sms": VIEW,
        "actions": FULL,
        "phones": FULL,
        "settings": NONE,
        "admins": NONE,
        "audit": NONE,
    },
    "auditor": {area: VIEW for area in AREAS},
}

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class RoleError(ValueError):
    """A role's name or rights that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Role:
    name: str
    rights: Mapping[str, str]

    def level(self, area: str) -> str:
        return self.rights.get(area, NONE)

    def allows(self, area: str, need: str) -> bool:
        """Whether this role has at least C{need} (view or full) on C{area}."""
        return _RANK[self.level(area)] >= _RANK[need]

    @property
    def built_in(self) -> bool:
        return self.name in BUILT_IN


def built_in(name: str) -> Role | None:
    rights = BUILT_IN.get(name)
    return None if rights is None else Role(name, rights)


def check_name(name: str) -> str:
    """A role's name: lower-case letters, digits, - and _, starting with a letter, ≤ 32."""
    if not _NAME.fullmatch(name):
        raise RoleError(
            f"role name {name!r}: use 1 to 32 lower-case letters, digits, - or _, "
            "starting with a letter"
        )
    return name


def check_rights(rights: Mapping[str, str]) -> dict[str, str]:
    """Every area's level, checked; areas not given are none."""
    unknown = sorted(set(rights) - set(AREAS))
    if unknown:
        raise RoleError(f"unknown area {unknown[0]!r} (areas: {', '.join(AREAS)})")
    checked = {}
    for area in AREAS:
        level = rights.get(area, NONE)
        if level not in LEVELS:
            raise RoleError(f"{area}: {level!r} is not one of {', '.join(LEVELS)}")
        checked[area] = level
    return checked


def to_json(rights: Mapping[str, str]) -> str:
    return json.dumps(check_rights(rights), sort_keys=True)


def from_json(name: str, text: str) -> Role:
    """A stored role; an area it does not name (one added later) is none."""
    loaded = json.loads(text)
    return Role(name, {a: v for a, v in loaded.items() if a in AREAS and v in LEVELS})
