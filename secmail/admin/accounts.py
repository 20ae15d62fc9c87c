# -*- test-case-name: tests.test_admin_accounts -*-
"""
Admins' sign-in: a password (argon2id) and a TOTP code (RFC 6238, 30-second steps, one step
either side of now accepted, a step that signed in once never again), 5 failures in a row
lock the name for 15 minutes; console sessions and API tokens. Time comes from the clock
given, so windows, replays, lockouts and expiry are tested with C{task.Clock}.

The TOTP secret is stored sealed (AES-GCM under a key derived from the master key ring, the
ring's key id beside it), so a copy of the database alone does not give the second factor.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from secmail.admin.roles import Role
from secmail.crypto import DerivedKeys
from secmail.store.admins import Actor, AdminStore
from secmail.store.sessions import new_session

log = Logger()

STEP = 30
#: Steps either side of now whose code is accepted.
WINDOW = 1
MAX_FAILURES = 5
LOCK_SECONDS = 15 * 60
MAX_PASSWORD = 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

RunInThread = Callable[..., "Deferred[Any]"]


class AccountError(ValueError):
    """A name or password that cannot be used; the message says which and why."""


def check_admin_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AccountError(
            f"admin name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    """NIST 800-63B: at least 12 characters for an admin; long passphrases welcome."""
    if len(password) < 12:
        raise AccountError("the password must have at least 12 characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password must have at most {MAX_PASSWORD} characters")
    return password


class SecretSeal:
    """Seals an admin's TOTP secret to the admin's name with the ring's derived key."""

    def __init__(self, keys: DerivedKeys) -> None:
        self.keys = keys

    @staticmethod
    def _aad(name: str) -> bytes:
        return f"secmail-admin-totp:{name}".encode()

    def seal(self, name: str, secret: str) -> tuple[str, bytes]:
        key_id, key = self.keys.current()
        nonce = os.urandom(12)
        return key_id, nonce + AESGCM(key).encrypt(nonce, secret.encode(), self._aad(name))

    def open(self, name: str, key_id: str, sealed: bytes) -> str | None:
        """The secret; None when no key of the ring opens it (a retired key, an altered row)."""
        keys = sorted(self.keys.all(), key=lambda pair: pair[0] != key_id)
        for _, key in keys:
            try:
                return AESGCM(key).decrypt(sealed[:12], sealed[12:], self._aad(name)).decode()
            except InvalidTag:
                continue
        return None


@dataclass(frozen=True)
class NewAdmin:
    new: bool
    #: The second factor, as an C{otpauth://totp/...} URI for an authenticator app.
    uri: str


class SignIn:
    """What a sign-in came to: C{session}/C{csrf} when it succeeded."""

    OK = "ok"
    FAILED = "failed"
    LOCKED = "locked"

    def __init__(self, outcome: str, session: str = "", csrf: str = "") -> None:
        self.outcome = outcome
        self.session = session
        self.csrf = csrf


def _direct(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(_call(function, *args))


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


class AdminAccounts:
    """
    @param run_in_thread: runs a function (argon2 hashing: CPU for tens of milliseconds) off
        the reactor thread; the CLI runs it directly.
    @param issuer: the name an authenticator app shows beside the admin's.
    """

    def __init__(
        self,
        store: AdminStore,
        keys: DerivedKeys,
        clock: Any,
        run_in_thread: RunInThread = _direct,
        hasher: PasswordHasher | None = None,
        issuer: str = "secmail",
    ) -> None:
        self.store = store
        self.seal = SecretSeal(keys)
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.hasher = hasher or PasswordHasher()
        self.issuer = issuer
        self._decoy: str | None = None

    def now(self) -> int:
        return int(self.clock.seconds())

    async def add(self, name: str, role: str, password: str, actor: Actor) -> NewAdmin:
        """
        Add an admin, or reset an existing one's role, password and second factor.

        @raise AccountError: a bad name or password. @raise RoleError: no such role.
        """
        check_admin_name(name)
        check_password(password)
        secret = pyotp.random_base32()
        password_hash = await self.run_in_thread(self.hasher.hash, password)
        key_id, sealed = self.seal.seal(name, secret)
        new = await self.store.put(name, role, password_hash, sealed, key_id, self.now(), actor)
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=self.issuer)
        return NewAdmin(new, uri)

    async def sign_in(
        self, name: str, password: str, code: str, address: str, replaces: str | None = None
    ) -> SignIn:
        """
        Check a name, password and TOTP code; every outcome is audited. A new session id at
        every sign-in; C{replaces}, the browser's session before, ends with it.
        """
        now = self.now()
        row = await self.store.get(name) if _NAME.fullmatch(name) else None
        shown = name if _NAME.fullmatch(name) else "(not an admin name)"
        if (row is not None and row.locked_until > now) or (
            row is None and await self.store.locked_without_account(shown, now, LOCK_SECONDS)
        ):
            await self.store.refused_locked(shown, now, address)
            return SignIn(SignIn.LOCKED)
        password = password[:MAX_PASSWORD]
        good = await self.run_in_thread(
            self._password_ok, row.password_hash if row else None, password
        )
        step = None
        if good and row is not None:
            secret = self.seal.open(row.name, row.key_id, row.totp_secret)
            step = None if secret is None else matching_step(secret, code, now, row.totp_last_step)
        if row is not None and step is not None:
            session, csrf = new_session()
            if await self.store.signed_in(name, step, now, session, csrf, address, replaces):
                return SignIn(SignIn.OK, session, csrf)
        if await self.store.failed(shown, now, address, MAX_FAILURES, LOCK_SECONDS):
            log.warn(
                "Admin {name} locked for {minutes} minutes after {n} failed sign-ins; "
                "the last from {address}",
                name=shown,
                minutes=LOCK_SECONDS // 60,
                n=MAX_FAILURES,
                address=address,
            )
            return SignIn(SignIn.LOCKED)
        return SignIn(SignIn.FAILED)

    def _password_ok(self, password_hash: str | None, password: str) -> bool:
        """The password against its hash; without an admin, against a decoy (same time)."""
        if password_hash is None:
            if self._decoy is None:
                self._decoy = self.hasher.hash(secrets.token_urlsafe(16))
            password_hash = self._decoy
            password = ""
        try:
            return bool(self.hasher.verify(password_hash, password)) and bool(password)
        except (VerificationError, InvalidHashError):
            return False

    async def session(self, session_id: str) -> tuple[str, Role, str] | None:
        """A live session's admin, role and CSRF token; None when it is over or unknown."""
        found = await self.store.session(session_id, self.now())
        if found is None:
            return None
        session, role = found
        return session.admin, role, session.csrf

    async def sign_out(self, session_id: str, address: str) -> None:
        await self.store.sign_out(session_id, self.now(), address)

    async def make_token(self, name: str, actor: Actor) -> str | None:
        """A new API token for admin C{name} (shown once; stored hashed); None: no such admin."""
        token = secrets.token_urlsafe(32)
        return token if await self.store.add_token(name, token, self.now(), actor) else None

    async def token_role(self, token: str) -> tuple[str, Role] | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", token):
            return None
        return await self.store.token_role(token, self.now())


def matching_step(secret: str, code: str, now: int, last_step: int) -> int | None:
    """
    The 30-second step whose code C{code} is, within C{WINDOW} steps of C{now} and after
    C{last_step} (a code that signed in once is not taken again); None when there is none.
    """
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    here = now // STEP
    found = None
    for step in range(here - WINDOW, here + WINDOW + 1):
        # Every candidate compared, in constant time, whatever matched before.
        if secrets.compare_digest(totp.at(step * STEP), code) and step > last_step:
            found = step
    return found
