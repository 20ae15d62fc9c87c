"""Admins' sign-in on each engine: TOTP window and replay, lockout, sessions, tokens, roles."""

from __future__ import annotations

import os
from typing import Any

import pyotp
from argon2 import PasswordHasher
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from secmail.admin.accounts import (
    LOCK_SECONDS,
    STEP,
    AccountError,
    AdminAccounts,
    SignIn,
    matching_step,
)
from secmail.admin.roles import FULL, NONE, VIEW, Role, RoleError
from secmail.crypto import DerivedKeys, MasterKey
from secmail.store.admins import ADMIN_SESSION_IDLE, ADMIN_SESSION_MAX, Actor, AdminStore
from secmail.store.audit import AuditTrail
from secmail.store.keys import retire_problems, usage_txn
from tests.dbs import on_each_engine, open_store

#: Cheap hashes for tests; the gateway uses argon2-cffi's defaults (argon2id, 64 MiB).
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
CLI = Actor("root", "local")
START = 1_800_000_000  # a step boundary: START % 30 == 0
ADDRESS = "192.0.2.7"


def secret_of(uri: str) -> str:
    return pyotp.parse_uri(uri).secret  # type: ignore[no-any-return]


def code(secret: str, at: float) -> str:
    return pyotp.TOTP(secret).at(int(at))  # type: ignore[no-any-return]


def test_matching_step_window() -> None:
    """A code is taken one step either side of now, not two; only after the last used step."""
    secret = pyotp.random_base32()
    now = START + 10
    here = now // STEP
    for offset in (-1, 0, 1):
        assert matching_step(secret, code(secret, now + offset * STEP), now, 0) == here + offset
    for offset in (-2, 2):
        assert matching_step(secret, code(secret, now + offset * STEP), now, 0) is None
    assert matching_step(secret, code(secret, now), now, here) is None  # used
    assert matching_step(secret, code(secret, now + STEP), now, here) == here + 1
    assert matching_step(secret, "12345", now, 0) is None
    assert matching_step(secret, "abcdef", now, 0) is None


@on_each_engine
class AccountsTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, _, _ = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.clock = Clock()
        self.clock.advance(START)
        self.store = AdminStore(self.db)
        self.accounts = AdminAccounts(
            self.store,
            DerivedKeys(MasterKey(os.urandom(32)), "admin-totp"),
            self.clock,
            hasher=FAST,
        )
        self.trail = AuditTrail(self.db)

    async def add(self, name: str = "alice", role: str = "admin") -> str:
        return secret_of((await self.accounts.add(name, role, PASSWORD, CLI)).uri)

    async def actions(self) -> list[tuple[str, str, str]]:
        return [(r.admin, r.address, r.action) for r in await self.trail.since(0)]

    async def test_sign_in_with_password_and_code(self) -> None:
        """The right password and the code of now start a session; the sign-in is audited."""
        secret = await self.add()
        result = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        assert result.outcome == SignIn.OK and result.session and result.csrf
        session = await self.accounts.session(result.session)
        assert session is not None
        assert (session[0], session[1].name, session[2]) == ("alice", "admin", result.csrf)
        assert (await self.actions())[-1] == ("alice", ADDRESS, "sign-in")
        stored = await self.store.get("alice")
        assert stored is not None and secret.encode() not in stored.totp_secret  # sealed
        assert stored.password_hash.startswith("$argon2id$")

    async def test_code_one_step_either_side_and_not_two(self) -> None:
        """With the clock 30 s either way a code still works; 60 s off it does not."""
        secret = await self.add()
        late = await self.accounts.sign_in("alice", PASSWORD, code(secret, START - 60), ADDRESS)
        assert late.outcome == SignIn.FAILED
        previous = await self.accounts.sign_in("alice", PASSWORD, code(secret, START - 30), ADDRESS)
        assert previous.outcome == SignIn.OK
        self.clock.advance(5 * STEP)
        ahead = await self.accounts.sign_in(
            "alice", PASSWORD, code(secret, self.clock.seconds() + 30), ADDRESS
        )
        assert ahead.outcome == SignIn.OK

    async def test_a_code_signs_in_once(self) -> None:
        """A code that signed in is refused the second time, and so is an older one."""
        secret = await self.add()
        first = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        assert first.outcome == SignIn.OK
        again = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        assert again.outcome == SignIn.FAILED
        older = await self.accounts.sign_in("alice", PASSWORD, code(secret, START - 30), ADDRESS)
        assert older.outcome == SignIn.FAILED
        self.clock.advance(STEP)
        nxt = await self.accounts.sign_in("alice", PASSWORD, code(secret, START + 30), ADDRESS)
        assert nxt.outcome == SignIn.OK

    async def test_wrong_password_with_right_code_fails(self) -> None:
        secret = await self.add()
        result = await self.accounts.sign_in("alice", "wrong" * 4, code(secret, START), ADDRESS)
        assert result.outcome == SignIn.FAILED
        assert (await self.actions())[-1] == ("alice", ADDRESS, "sign-in failed")

    async def test_five_failures_lock_for_fifteen_minutes(self) -> None:
        """The 5th failure locks the name (audit row, log line with the address); after
        15 minutes the right answers work again."""
        secret = await self.add()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore[attr-defined]
        outcomes = [
            (await self.accounts.sign_in("alice", "not the password", "000000", ADDRESS)).outcome
            for _ in range(5)
        ]
        assert outcomes == [SignIn.FAILED] * 4 + [SignIn.LOCKED]
        assert (await self.actions())[-2:] == [
            ("alice", ADDRESS, "sign-in failed"),
            ("alice", ADDRESS, "locked"),
        ]
        lines = [e for e in events if "locked for" in e.get("log_format", "")]
        assert len(lines) == 1 and lines[0]["address"] == ADDRESS and lines[0]["name"] == "alice"
        self.clock.advance(LOCK_SECONDS - STEP)
        now = self.clock.seconds()
        right = await self.accounts.sign_in("alice", PASSWORD, code(secret, now), ADDRESS)
        assert right.outcome == SignIn.LOCKED
        assert (await self.actions())[-1][2] == "sign-in locked"
        self.clock.advance(STEP + 1)
        now = self.clock.seconds()
        later = await self.accounts.sign_in("alice", PASSWORD, code(secret, now), ADDRESS)
        assert later.outcome == SignIn.OK

    async def test_a_name_that_is_no_admin_answers_like_one(self) -> None:
        """Five failures "lock" a name that does not exist too, for 15 minutes: the answers
        do not tell which names are admins."""
        await self.add()
        outcomes = [
            (await self.accounts.sign_in("mallory", "guess", "000000", ADDRESS)).outcome
            for _ in range(6)
        ]
        assert outcomes == [SignIn.FAILED] * 4 + [SignIn.LOCKED] * 2
        assert (await self.actions())[-3:] == [
            ("mallory", ADDRESS, "sign-in failed"),
            ("mallory", ADDRESS, "locked"),
            ("mallory", ADDRESS, "sign-in locked"),
        ]
        self.clock.advance(LOCK_SECONDS + 1)
        again = await self.accounts.sign_in("mallory", "guess", "000000", ADDRESS)
        assert again.outcome == SignIn.FAILED

    async def test_a_good_sign_in_clears_the_failures(self) -> None:
        secret = await self.add()
        for _ in range(4):
            await self.accounts.sign_in("alice", "not the password", "000000", ADDRESS)
        ok = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        assert ok.outcome == SignIn.OK
        failed = await self.accounts.sign_in("alice", "not the password", "000000", ADDRESS)
        assert failed.outcome == SignIn.FAILED

    async def test_unknown_name_fails_and_is_audited(self) -> None:
        await self.add()
        result = await self.accounts.sign_in("mallory", PASSWORD, "123456", ADDRESS)
        assert result.outcome == SignIn.FAILED
        assert (await self.actions())[-1] == ("mallory", ADDRESS, "sign-in failed")

    async def test_session_ends_after_fifteen_minutes_idle(self) -> None:
        secret = await self.add()
        result = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        self.clock.advance(ADMIN_SESSION_IDLE - 1)
        assert await self.accounts.session(result.session) is not None
        self.clock.advance(ADMIN_SESSION_IDLE + 1)
        assert await self.accounts.session(result.session) is None

    async def test_session_ends_after_eight_hours_in_all(self) -> None:
        secret = await self.add()
        result = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        while self.clock.seconds() + 600 <= START + ADMIN_SESSION_MAX:
            self.clock.advance(600)
            assert await self.accounts.session(result.session) is not None
        self.clock.advance(START + ADMIN_SESSION_MAX + 1 - self.clock.seconds())
        assert await self.accounts.session(result.session) is None

    async def test_a_new_sign_in_ends_the_browsers_old_session(self) -> None:
        secret = await self.add()
        old = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        self.clock.advance(STEP)
        now = self.clock.seconds()
        new = await self.accounts.sign_in(
            "alice", PASSWORD, code(secret, now), ADDRESS, replaces=old.session
        )
        assert new.outcome == SignIn.OK and new.session != old.session
        assert await self.accounts.session(old.session) is None
        assert await self.accounts.session(new.session) is not None

    async def test_stale_sessions_are_deleted(self) -> None:
        """The periodic clean-up (tap.SessionCleanup) removes sessions past 15 minutes idle."""
        secret = await self.add()
        result = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        assert await self.store.delete_stale(START + ADMIN_SESSION_IDLE) == 0
        assert await self.store.delete_stale(START + ADMIN_SESSION_IDLE + 1) == 1
        assert await self.accounts.session(result.session) is None

    async def test_sign_out_ends_the_session(self) -> None:
        secret = await self.add()
        result = await self.accounts.sign_in("alice", PASSWORD, code(secret, START), ADDRESS)
        await self.accounts.sign_out(result.session, ADDRESS)
        assert await self.accounts.session(result.session) is None
        assert (await self.actions())[-1] == ("alice", ADDRESS, "sign-out")

    async def test_adding_again_resets_password_and_second_factor(self) -> None:
        """Adding an existing name: a new secret, old sessions ended, the failures cleared."""
        old = await self.add()
        session = await self.accounts.sign_in("alice", PASSWORD, code(old, START), ADDRESS)
        added = await self.accounts.add("alice", "auditor", PASSWORD + "!", CLI)
        assert not added.new
        new = secret_of(added.uri)
        assert new != old
        assert await self.accounts.session(session.session) is None
        self.clock.advance(STEP)
        now = self.clock.seconds()
        with_old = await self.accounts.sign_in("alice", PASSWORD + "!", code(old, now), ADDRESS)
        assert with_old.outcome == SignIn.FAILED
        result = await self.accounts.sign_in("alice", PASSWORD + "!", code(new, now), ADDRESS)
        assert result.outcome == SignIn.OK
        found = await self.accounts.session(result.session)
        assert found is not None and found[1].name == "auditor"
        assert ("root", "local", "admin reset") in await self.actions()

    async def test_bad_names_passwords_and_roles_are_refused(self) -> None:
        for name, password in (("", PASSWORD), ("a b", PASSWORD), ("alice", "short")):
            try:
                await self.accounts.add(name, "admin", password, CLI)
            except AccountError:
                continue
            raise AssertionError(f"{name!r}/{password!r} was taken")
        try:
            await self.accounts.add("alice", "nosuch", PASSWORD, CLI)
        except RoleError as e:
            assert "nosuch" in str(e)
        else:
            raise AssertionError("an unknown role was taken")
        assert await self.store.admins() == [] and await self.actions() == []

    async def test_tokens_act_with_the_admins_role_now(self) -> None:
        await self.add("carol", "helpdesk")
        token = await self.accounts.make_token("carol", CLI)
        assert token is not None
        found = await self.accounts.token_role(token)
        assert found is not None and found[0] == "carol" and found[1].name == "helpdesk"
        await self.store.save_role(Role("desk", {"trace": "view"}), START, CLI)
        await self.accounts.add("carol", "desk", PASSWORD, CLI)
        # A reset (adding the name again) ends the tokens too: a leaked one stops working.
        assert await self.accounts.token_role(token) is None
        token = await self.accounts.make_token("carol", CLI)
        assert token is not None
        await self.store.save_role(Role("desk", {"trace": "full"}), START, CLI)
        found = await self.accounts.token_role(token)
        assert found is not None and found[1].level("trace") == "full"  # the role as it is now
        assert await self.accounts.token_role(token[:-1] + "x") is None
        assert await self.accounts.make_token("nobody", CLI) is None
        await self.store.remove("carol", START, CLI)
        assert await self.accounts.token_role(token) is None

    async def test_roles_of_their_own(self) -> None:
        """A made role is stored and used; built-in ones cannot be overwritten."""
        new = await self.store.save_role(
            Role("trace-only", {"trace": VIEW, "actions": FULL}), START, Actor("alice", ADDRESS)
        )
        assert new
        role = await self.store.role("trace-only")
        assert role is not None and role.level("trace") == VIEW and role.level("audit") == NONE
        assert [r.name for r in await self.store.roles()] == [
            "admin",
            "helpdesk",
            "auditor",
            "trace-only",
        ]
        try:
            await self.store.save_role(Role("admin", {}), START, CLI)
        except RoleError:
            pass
        else:
            raise AssertionError("a built-in role was changed")
        secret = await self.add("dave", "trace-only")
        result = await self.accounts.sign_in("dave", PASSWORD, code(secret, START), ADDRESS)
        found = await self.accounts.session(result.session)
        assert found is not None and found[1].allows("actions", FULL)
        assert not found[1].allows("audit", VIEW)
        assert ("alice", ADDRESS, "role made") in await self.actions()


@on_each_engine
class SecondFactorKeyTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, _, _ = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]

    async def test_a_key_sealing_a_second_factor_is_not_retired(self) -> None:
        """secmail keys retire refuses a key that still seals an admin's TOTP secret."""
        master = MasterKey(os.urandom(32))
        accounts = AdminAccounts(
            AdminStore(self.db), DerivedKeys(master, "admin-totp"), Clock(), hasher=FAST
        )
        await accounts.add("alice", "admin", PASSWORD, CLI)
        usage = await self.db.run(lambda txn: usage_txn(txn, START))
        assert usage[master.key_id].rows["admin second factors"] == 1
        problems = retire_problems(master.key_id, usage, [], START)
        assert len(problems) == 1 and "secmail admin add" in problems[0]
