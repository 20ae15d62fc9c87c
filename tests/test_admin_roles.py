"""The built-in roles exactly as issue 13's contract says, and a role's rights checked."""

from __future__ import annotations

import pytest

from secmail.admin.roles import AREAS, FULL, NONE, VIEW, RoleError, built_in, check_rights


def test_admin_has_full_rights_everywhere() -> None:
    role = built_in("admin")
    assert role is not None and all(role.allows(area, FULL) for area in AREAS)


def test_helpdesk_as_the_contract_says() -> None:
    """View on overview, trace, queue, SMS; full on message actions and phones; none else."""
    role = built_in("helpdesk")
    assert role is not None
    assert {a: role.level(a) for a in AREAS} == {
        "overview": VIEW,
        "trace": VIEW,
        "queue": VIEW,
        "sms": VIEW,
        "actions": FULL,
        "phones": FULL,
        "settings": NONE,
        "admins": NONE,
        "audit": NONE,
    }


def test_auditor_views_everything_and_changes_nothing() -> None:
    role = built_in("auditor")
    assert role is not None
    assert all(role.allows(a, VIEW) and not role.allows(a, FULL) for a in AREAS)


def test_rights_are_checked() -> None:
    assert check_rights({"trace": VIEW})["audit"] == NONE
    with pytest.raises(RoleError, match="unknown area 'bogus'"):
        check_rights({"bogus": VIEW})
    with pytest.raises(RoleError, match="trace: 'all'"):
        check_rights({"trace": "all"})
