"""People who use the workbench and the API: users with one role, hashed API tokens, web sessions.

Tokens are shown once (`factory users add`) and stored only as their sha256.  Sessions are rows
keyed by the sha256 of a random id; the browser holds the id in a signed cookie.  Failed logins are
recorded so the web layer can rate-limit them.  The tables live in the ledger's database, in their
ledger's metadata (migration 0002) but are not part of the hash-chained record.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from factory.errors import FactoryError
from factory.storage.ledger import login_failures, users, web_sessions

ROLES = ("annotator", "expert", "operator", "auditor", "client")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

class UserError(FactoryError):
    """A user cannot be added or changed (bad name or role, name taken, unknown user)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_token() -> str:
    """A fresh API token: 'fct_' + 256 random bits, URL-safe."""
    return "fct_" + secrets.token_urlsafe(32)


class UserStore:
    """Users, tokens, sessions and failed logins in the ledger database (any SQLAlchemy engine)."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine | None = None, cache_seconds: float = 5.0):
        self.engine = engine
        self.reader = reader or engine
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict | None]] = {}

    @classmethod
    def for_ledger(cls, ledger) -> "UserStore":
        return cls(ledger.engine, ledger.reader)

    # ------------------------------------------------------------------ users
    def add(self, name: str, role: str) -> str:
        """Create a user and return their API token (shown once; only its hash is stored)."""
        if not NAME_RE.match(name or ""):
            raise UserError(f"user name '{name}' must be 1-128 letters, digits, '_', '.', '@' or '-'")
        if role not in ROLES:
            raise UserError(f"role '{role}' is not one of {list(ROLES)}")
        token = new_token()
        with self.engine.begin() as c:
            if c.execute(sa.select(users.c.name).where(users.c.name == name)).first():
                raise UserError(f"user '{name}' exists; give them a new token with `factory users token {name}`")
            c.execute(users.insert().values(name=name, role=role, token_sha256=sha256(token),
                                            created_at=_now().isoformat(timespec="seconds"), disabled=False))
        return token

    def rotate(self, name: str) -> str:
        """Replace a user's token (the old one stops working at once) and end their sessions."""
        token = new_token()
        with self.engine.begin() as c:
            if c.execute(users.update().where(users.c.name == name).values(token_sha256=sha256(token))).rowcount != 1:
                raise UserError(f"user '{name}': no such user; see `factory users list`")
            c.execute(web_sessions.delete().where(web_sessions.c.name == name))
        self._cache.clear()
        return token

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        with self.engine.begin() as c:
            if c.execute(users.update().where(users.c.name == name).values(disabled=disabled)).rowcount != 1:
                raise UserError(f"user '{name}': no such user; see `factory users list`")
            if disabled:
                c.execute(web_sessions.delete().where(web_sessions.c.name == name))
        self._cache.clear()

    def list(self) -> pd.DataFrame:
        with self.reader.connect() as c:
            rows = c.execute(sa.select(users.c.name, users.c.role, users.c.created_at, users.c.disabled)
                             .order_by(users.c.name)).mappings().all()
        return pd.DataFrame(rows, columns=["name", "role", "created_at", "disabled"])

    def get(self, name: str) -> dict | None:
        with self.reader.connect() as c:
            row = c.execute(sa.select(users).where(users.c.name == name)).mappings().first()
        return dict(row) if row else None

    def cached_token(self, token: str) -> tuple[bool, dict | None]:
        """(True, user or None) when this token's lookup is cached and fresh, else (False, None); never reads the
        database (the web app's async code asks this first and reads in a worker thread only on a miss)."""
        if not token:
            return True, None
        hit = self._cache.get(sha256(token))
        if hit and time.monotonic() - hit[0] < self.cache_seconds:
            return True, hit[1]
        return False, None

    def by_token(self, token: str) -> dict | None:
        """The enabled user holding this API token, or None (cached for a few seconds)."""
        if not token:
            return None
        h = sha256(token)
        hit = self._cache.get(h)
        t = time.monotonic()
        if hit and t - hit[0] < self.cache_seconds:
            return hit[1]
        with self.reader.connect() as c:
            row = c.execute(sa.select(users.c.name, users.c.role).where(
                users.c.token_sha256 == h, users.c.disabled.is_(False))).mappings().first()
        user = dict(row) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[h] = (t, user)
        return user

    def check_login(self, name: str, token: str) -> dict | None:
        user = self.by_token(token)
        if user is None or not secrets.compare_digest(user["name"], name or ""):
            return None
        return user

    # ------------------------------------------------------------------ sessions
    def new_session(self, name: str, hours: float = 12) -> tuple[str, str]:
        """Open a web session; returns (session id for the cookie, CSRF token for forms)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        n = _now()
        with self.engine.begin() as c:
            c.execute(web_sessions.delete().where(web_sessions.c.expires_at < n.isoformat()))
            c.execute(web_sessions.insert().values(session_sha256=sha256(sid), name=name, csrf_token=csrf,
                                                   created_at=n.isoformat(),
                                                   expires_at=(n + timedelta(hours=hours)).isoformat()))
        return sid, csrf

    def session(self, sid: str) -> dict | None:
        """The live session's user (name, role, csrf_token), or None if unknown, expired or disabled."""
        with self.reader.connect() as c:
            row = c.execute(sa.select(web_sessions.c.name, web_sessions.c.csrf_token, users.c.role)
                            .join(users, users.c.name == web_sessions.c.name)
                            .where(web_sessions.c.session_sha256 == sha256(sid),
                                   web_sessions.c.expires_at > _now().isoformat(),
                                   users.c.disabled.is_(False))).mappings().first()
        return dict(row) if row else None

    def end_session(self, sid: str) -> None:
        with self.engine.begin() as c:
            c.execute(web_sessions.delete().where(web_sessions.c.session_sha256 == sha256(sid)))

    # ------------------------------------------------------------------ failed logins
    def record_failure(self, *keys: str) -> None:
        t = time.time()
        with self.engine.begin() as c:
            c.execute(login_failures.delete().where(login_failures.c.at < t - 86400))
            c.execute(login_failures.insert(), [{"key": k, "at": t} for k in keys])

    def failures(self, key: str, window_seconds: float) -> int:
        with self.reader.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(login_failures).where(
                login_failures.c.key == key, login_failures.c.at > time.time() - window_seconds)).scalar_one())

    def clear_failures(self, key: str) -> None:
        with self.engine.begin() as c:
            c.execute(login_failures.delete().where(login_failures.c.key == key))
