"""Accounts of a team: the users file, salted password hashes and login throttling.

    --users FILE      one ``name:role:hash`` line per person (roles: annotator, reviewer, admin);
                      blank lines and ``#`` comments are ignored
    --auth user:pass  one person (role admin), as before

Hashes are ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (standard library `hashlib.scrypt`, base64 salt and
key), so the parameters travel with each hash. `LoginGuard` slows down guessing: after a few
failed logins of one user name, or from one address, further attempts are refused for a window
that doubles with each failure (1 s, 2 s, 4 s ... 5 min) whatever the password; a success resets.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from condinst.errors import UserError
from condinst.io import atomic_write_text

ROLES = ("annotator", "reviewer", "admin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
KEY_BYTES = 32
MIN_PASSWORD = 8


class AccountsError(UserError):
    """A users file or account that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str

    def may_review(self) -> bool:
        return self.role in ("reviewer", "admin")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash with its parameters: ``scrypt$n$r$p$salt$key``."""
    salt = secrets.token_bytes(16) if salt is None else salt
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=KEY_BYTES, maxmem=64 * 1024 * 1024, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${_b64(salt)}${_b64(key)}"


def check_hash(encoded: str) -> None:
    """AccountsError unless `encoded` is a hash this module writes."""
    parts = encoded.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(v) for v in parts[1:4])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(salt) < 8 or len(key) < 16:
            raise ValueError
    except ValueError:
        raise AccountsError("the password hash is not 'scrypt$n$r$p$salt$key' (make it with "
                            "'python -m app users add')") from None


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (constant-time comparison)."""
    _, n, r, p, salt, key = encoded.split("$")
    expected = base64.b64decode(key)
    actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(expected), maxmem=64 * 1024 * 1024)
    return hmac.compare_digest(actual, expected)


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise AccountsError(f"user name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountsError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def read_users(path: str | os.PathLike) -> dict[str, Account]:
    """The accounts of a users file; AccountsError naming the file and line of the first problem."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AccountsError(f"--users {path}: no such file (create it with 'python -m app users add')") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountsError(f"--users {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    accounts: dict[str, Account] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, role, encoded = line.split(":", 2)
            check_name(name)
            check_role(role)
            check_hash(encoded)
            if name in accounts:
                raise AccountsError(f"user {name!r} appears twice")
        except ValueError:
            raise AccountsError(f"--users {path} line {number}: expected name:role:hash") from None
        except AccountsError as exc:
            raise AccountsError(f"--users {path} line {number}: {exc}") from None
        accounts[name] = Account(name, role, encoded)
    if not accounts:
        raise AccountsError(f"--users {path}: no accounts in it (add one with 'python -m app users add')")
    return accounts


def check_permissions(path: str | os.PathLike) -> str | None:
    """What the users file's mode means for the team, as ssh judges a key file.

    Writable by other users of the machine: AccountsError (anyone who can write it can make themselves
    an admin). Readable by them: a warning line to print (they can copy the hashes and guess the
    passwords offline). None when only its owner can read it (0600, what `add_user` writes)."""
    path = Path(path).expanduser()
    if os.name != "posix":
        return None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None  # read_users says what is wrong with it
    if mode & 0o022:
        raise AccountsError(f"--users {path} is writable by other users of this machine (mode {mode:04o}): anyone "
                            f"who can change it can give themselves an account; run 'chmod 600 {path}'")
    if mode & 0o044:
        return (f"--users {path} is readable by other users of this machine (mode {mode:04o}): they can copy the "
                f"password hashes and guess passwords offline; run 'chmod 600 {path}'")
    return None


def add_user(path: str | os.PathLike, name: str, role: str, password: str, replace: bool = False) -> str:
    """Add (or with `replace`, update) one account in a users file, written atomically (mode 0600)."""
    path = Path(path).expanduser()
    check_name(name)
    check_role(role)
    if len(password) < MIN_PASSWORD:
        raise AccountsError(f"the password must have at least {MIN_PASSWORD} characters")
    accounts = read_users(path) if path.is_file() and path.stat().st_size else {}
    if name in accounts and not replace:
        raise AccountsError(f"user {name!r} already exists in {path}; pass --replace to change the password or role")
    existed = name in accounts
    accounts[name] = Account(name, role, hash_password(password))
    text = "".join(f"{a.name}:{a.role}:{a.password_hash}\n" for a in accounts.values())
    try:
        atomic_write_text(path, text)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise AccountsError(f"cannot write {path}: {exc.strerror}") from None
    return f"{'updated' if existed else 'added'} {name} ({role}) in {path}"


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class LoginGuard:
    """Failed logins per key ('user:<name>', 'addr:<ip>'): `free` failures, then a doubling lockout."""

    free_per_user: int = 3
    free_per_address: int = 10
    max_lock: float = 300.0
    clock: object = time.monotonic
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked_for(self, *keys: str) -> float:
        """Seconds until every key may try again (0: not locked)."""
        now = self.clock()
        with self._lock:
            return max([self._failures[k].locked_until - now for k in keys if k in self._failures] + [0.0])

    def failed(self, user_key: str, address_key: str) -> None:
        now = self.clock()
        with self._lock:
            for key, free in ((user_key, self.free_per_user), (address_key, self.free_per_address)):
                entry = self._failures.setdefault(key, _Failures())
                entry.count += 1
                if entry.count > free:
                    entry.locked_until = now + min(self.max_lock, 2.0 ** (entry.count - free - 1))

    def succeeded(self, user_key: str, address_key: str) -> None:
        with self._lock:
            self._failures.pop(user_key, None)
            self._failures.pop(address_key, None)


class Accounts:
    """Who may log in and with which role; `check` is the login function (throttled)."""

    def __init__(self, accounts: dict[str, Account], guard: LoginGuard | None = None, team: bool | None = None):
        """`team`: the page shows the team's review flow (default: when there is more than one account)."""
        self.accounts = dict(accounts)
        self.team = len(self.accounts) > 1 if team is None else team
        self.guard = guard or LoginGuard()
        self._dummy = hash_password(secrets.token_hex(8))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Accounts":
        return cls(read_users(path), team=True)

    @classmethod
    def single(cls, name: str, password: str) -> "Accounts":
        """The one account of ``--auth user:pass`` (role admin)."""
        return cls({name: Account(name, "admin", hash_password(password))})

    def role(self, name: str | None) -> str | None:
        account = self.accounts.get(name or "")
        return account.role if account else None

    def check(self, name: str, password: str, address: str = "?") -> bool:
        """Whether the login succeeds; refused without checking while the user or address is locked out."""
        user_key, address_key = f"user:{name}", f"addr:{address}"
        if self.guard.locked_for(user_key, address_key) > 0:
            return False
        account = self.accounts.get(name)
        ok = verify_password(password, account.password_hash if account else self._dummy) and account is not None
        if ok:
            self.guard.succeeded(user_key, address_key)
        else:
            self.guard.failed(user_key, address_key)
        return ok


def is_team(accounts: Accounts | None) -> bool:
    """Whether the app runs for a team (review flow, take-over, presence) rather than one person."""
    return accounts is not None and accounts.team
