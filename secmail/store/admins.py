# -*- test-case-name: tests.test_admin_accounts -*-
"""
The admin console's accounts in the database: admins, the roles admins made, API tokens and
console sessions (15 minutes idle, 8 hours in all). Every change is written with its audit
row in one transaction (L{secmail.store.audit.audit_txn}); a refused change writes none.
Only hashes of tokens and cookies are stored; the TOTP secret is sealed by the caller
(L{secmail.admin.accounts}), and its C{key_id} names the master key it is sealed under.
"""

from __future__ import annotations

from dataclasses import dataclass

from secmail.admin.roles import BUILT_IN, Role, RoleError, built_in, from_json, to_json
from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.rows import hash_token
from secmail.store.sessions import SessionTable

ADMIN_SESSION_IDLE = 15 * 60
ADMIN_SESSION_MAX = 8 * 3600


@dataclass(frozen=True)
class Actor:
    """Who makes a change, and from where (an IP address, or C{"local"} for a command)."""

    name: str
    address: str


@dataclass(frozen=True)
class AdminRow:
    name: str
    role: str
    password_hash: str
    totp_secret: bytes
    key_id: str
    totp_last_step: int
    failures: int
    locked_until: int
    created: int


@dataclass(frozen=True)
class AdminSummary:
    name: str
    role: str
    created: int
    locked_until: int
    tokens: int


@dataclass(frozen=True)
class AdminSession:
    admin: str
    role: str
    csrf: str
    created: int


_COLUMNS = (
    "name, role, password_hash, totp_secret, key_id, totp_last_step, failures, "
    "locked_until, created"
)


def _audit(txn: Txn, actor: Actor, now: int, action: str, after: str | None = None) -> None:
    audit_txn(txn, AuditRow(now, actor.name, actor.address, action, None, None, after))


def role_txn(txn: Txn, name: str) -> Role | None:
    """A built-in role, or one an admin made; None when there is no such role."""
    found = built_in(name)
    if found is not None:
        return found
    row = txn.execute("SELECT pages FROM admin_roles WHERE name = ?", (name,)).fetchone()
    return None if row is None else from_json(name, row[0])


class AdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.sessions: SessionTable[AdminSession] = SessionTable(
            "admin_sessions",
            ["admin"],
            AdminSession,
            read="s.admin, a.role",
            join="JOIN admins a ON a.name = s.admin",
            idle=ADMIN_SESSION_IDLE,
            lifetime=ADMIN_SESSION_MAX,
        )

    # --- admins -------------------------------------------------------------------------

    async def get(self, name: str) -> AdminRow | None:
        def txn_(txn: Txn) -> AdminRow | None:
            row = txn.execute(f"SELECT {_COLUMNS} FROM admins WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            return AdminRow(
                row[0], row[1], row[2], bytes(row[3]), row[4], *(int(v) for v in row[5:])
            )

        return await self.db.run(txn_)

    async def put(
        self,
        name: str,
        role: str,
        password_hash: str,
        sealed_secret: bytes,
        key_id: str,
        now: int,
        actor: Actor,
    ) -> bool:
        """
        Add an admin, or reset an existing one's role, password and second factor (and end
        its sessions and API tokens). True when the name was new.

        @raise RoleError: there is no role C{role}.
        """

        def txn_(txn: Txn) -> bool:
            if role_txn(txn, role) is None:
                raise RoleError(f"no role {role!r} (built in: {', '.join(BUILT_IN)})")
            txn.execute(
                "UPDATE admins SET role = ?, password_hash = ?, totp_secret = ?, key_id = ?, "
                "totp_last_step = 0, failures = 0, locked_until = 0 WHERE name = ?",
                (role, password_hash, sealed_secret, key_id, name),
            )
            new = txn.rowcount == 0
            if new:
                txn.execute(
                    f"INSERT INTO admins ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?)",
                    (name, role, password_hash, sealed_secret, key_id, now),
                )
            else:
                # A reset is what an admin whose factors leaked gets: nothing of theirs lives on.
                self.sessions.end_all_txn(txn, "admin", name)
                txn.execute("DELETE FROM admin_tokens WHERE admin = ?", (name,))
            _audit(txn, actor, now, "admin added" if new else "admin reset", f"{name} ({role})")
            return new

        return await self.db.run(txn_)

    async def remove(self, name: str, now: int, actor: Actor) -> bool:
        """Remove an admin with its tokens and sessions; False when there was none."""

        def txn_(txn: Txn) -> bool:
            txn.execute("DELETE FROM admins WHERE name = ?", (name,))
            if txn.rowcount == 0:
                return False
            txn.execute("DELETE FROM admin_tokens WHERE admin = ?", (name,))
            self.sessions.end_all_txn(txn, "admin", name)
            _audit(txn, actor, now, "admin removed", name)
            return True

        return await self.db.run(txn_)

    async def admins(self) -> list[AdminSummary]:
        def txn_(txn: Txn) -> list[AdminSummary]:
            rows = txn.execute(
                "SELECT a.name, a.role, a.created, a.locked_until, "
                "(SELECT COUNT(*) FROM admin_tokens t WHERE t.admin = a.name) "
                "FROM admins a ORDER BY a.name"
            ).fetchall()
            return [AdminSummary(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]

        return await self.db.run(txn_)

    # --- sign-in ------------------------------------------------------------------------

    async def signed_in(
        self,
        name: str,
        step: int,
        now: int,
        session_id: str,
        csrf: str,
        address: str,
        replaces: str | None = None,
    ) -> bool:
        """
        A good password and the code of TOTP C{step}: record the step (so the code is not
        taken again), clear the failures, start a session and audit it, in one transaction.
        False, and nothing written, when the step was used already or the name is locked:
        a concurrent sign-in got there first. C{replaces}: the browser's old session, ended.
        """

        def txn_(txn: Txn) -> bool:
            txn.execute(
                "UPDATE admins SET totp_last_step = ?, failures = 0, locked_until = 0 "
                "WHERE name = ? AND totp_last_step < ? AND locked_until <= ?",
                (step, name, step, now),
            )
            if txn.rowcount != 1:
                return False
            self.sessions.create_txn(txn, session_id, csrf, (name,), now, replaces)
            _audit(txn, Actor(name, address), now, "sign-in")
            return True

        return await self.db.run(txn_)

    async def failed(self, name: str, now: int, address: str, limit: int, lock_for: int) -> bool:
        """
        A failed sign-in for C{name} (an admin or not): audited; an admin's C{limit}th
        failure in a row locks the name for C{lock_for} seconds. True when this locked it.
        """

        def txn_(txn: Txn) -> bool:
            _audit(txn, Actor(name, address), now, "sign-in failed")
            row = txn.execute(
                "UPDATE admins SET failures = failures + 1 WHERE name = ? RETURNING failures",
                (name,),
            ).fetchone()
            if row is None:
                # No such admin: counted from the audit trail, so that the answers (and the
                # lock) are the same as for a real name, which is not given away.
                if _failures_since_lock_txn(txn, name) < limit:
                    return False
                _audit(txn, Actor(name, address), now, "locked", f"{limit} failed sign-ins")
                return True
            if int(row[0]) < limit:
                return False
            txn.execute(
                "UPDATE admins SET failures = 0, locked_until = ? WHERE name = ?",
                (now + lock_for, name),
            )
            _audit(txn, Actor(name, address), now, "locked", f"{limit} failed sign-ins")
            return True

        return await self.db.run(txn_)

    async def locked_without_account(self, name: str, now: int, lock_for: int) -> bool:
        """Whether a name that is no admin was "locked" in the last C{lock_for} seconds."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT 1 FROM admin_audit WHERE admin = ? AND action = 'locked' AND at > ? "
                "LIMIT 1",
                (name, now - lock_for),
            ).fetchone()
        )
        return row is not None

    async def refused_locked(self, name: str, now: int, address: str) -> None:
        await self.db.run(lambda txn: _audit(txn, Actor(name, address), now, "sign-in locked"))

    async def session(self, session_id: str, now: int) -> tuple[AdminSession, Role] | None:
        """The live session for a cookie and its admin's role now; None when over."""

        def txn_(txn: Txn) -> tuple[AdminSession, Role] | None:
            session = self.sessions.touch_txn(txn, session_id, now)
            if session is None:
                return None
            role = role_txn(txn, session.role)
            return None if role is None else (session, role)

        return await self.db.run(txn_)

    async def sign_out(self, session_id: str, now: int, address: str) -> None:
        def txn_(txn: Txn) -> None:
            ended = self.sessions.end_txn(txn, session_id)
            if ended is not None:
                _audit(txn, Actor(str(ended[0]), address), now, "sign-out")

        await self.db.run(txn_)

    async def delete_stale(self, now: int) -> int:
        return await self.db.run(lambda txn: self.sessions.delete_stale_txn(txn, now))

    # --- API tokens ---------------------------------------------------------------------

    async def add_token(self, name: str, token: str, now: int, actor: Actor) -> bool:
        """Store a new token's hash for admin C{name}; False when there is no such admin."""

        def txn_(txn: Txn) -> bool:
            if txn.execute("SELECT 1 FROM admins WHERE name = ?", (name,)).fetchone() is None:
                return False
            txn.execute(
                "INSERT INTO admin_tokens (id_hash, admin, created) VALUES (?, ?, ?)",
                (hash_token(token), name, now),
            )
            _audit(txn, actor, now, "token made", name)
            return True

        return await self.db.run(txn_)

    async def token_role(self, token: str, now: int) -> tuple[str, Role] | None:
        """The admin a token acts for and that admin's role now; None for no such token."""

        def txn_(txn: Txn) -> tuple[str, Role] | None:
            row = txn.execute(
                "SELECT a.name, a.role FROM admin_tokens t JOIN admins a ON a.name = t.admin "
                "WHERE t.id_hash = ?",
                (hash_token(token),),
            ).fetchone()
            if row is None:
                return None
            txn.execute(
                "UPDATE admin_tokens SET last_used = ? WHERE id_hash = ?", (now, hash_token(token))
            )
            role = role_txn(txn, row[1])
            return None if role is None else (row[0], role)

        return await self.db.run(txn_)

    # --- roles --------------------------------------------------------------------------

    async def role(self, name: str) -> Role | None:
        return await self.db.run(lambda txn: role_txn(txn, name))

    async def roles(self) -> list[Role]:
        """The built-in roles, then those admins made, by name."""

        def txn_(txn: Txn) -> list[Role]:
            rows = txn.execute("SELECT name, pages FROM admin_roles ORDER BY name").fetchall()
            return [from_json(name, pages) for name, pages in rows]

        made = await self.db.run(txn_)
        return [Role(name, rights) for name, rights in BUILT_IN.items()] + made

    async def save_role(self, role: Role, now: int, actor: Actor) -> bool:
        """
        Make a role, or change one made before (not a built-in one). True when it is new.

        @raise RoleError: a built-in role's name, or rights that are not areas and levels.
        """
        if role.built_in:
            raise RoleError(f"role {role.name!r} is built in and cannot be changed")
        pages = to_json(role.rights)

        def txn_(txn: Txn) -> bool:
            txn.execute("UPDATE admin_roles SET pages = ? WHERE name = ?", (pages, role.name))
            new = txn.rowcount == 0
            if new:
                txn.execute(
                    "INSERT INTO admin_roles (name, pages, created) VALUES (?, ?, ?)",
                    (role.name, pages, now),
                )
            _audit(txn, actor, now, "role made" if new else "role changed", f"{role.name} {pages}")
            return new

        return await self.db.run(txn_)


def _failures_since_lock_txn(txn: Txn, name: str) -> int:
    """The failed sign-ins under C{name} in the audit trail since its last lock."""
    row = txn.execute(
        "SELECT COUNT(*) FROM admin_audit WHERE admin = ? AND action = 'sign-in failed' AND "
        "at > COALESCE((SELECT MAX(at) FROM admin_audit WHERE admin = ? AND action = 'locked'), "
        "-1)",
        (name, name),
    ).fetchone()
    return int(row[0])
