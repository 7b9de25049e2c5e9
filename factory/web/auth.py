"""Authentication and roles for the workbench: bearer tokens for the API, signed session cookies for pages.

Every endpoint declares the roles it admits (`needs(...)`); a request without valid credentials gets
401, a valid user with another role 403.  Writes made with a session cookie must carry the session's
CSRF token (header `X-CSRF-Token` or form field `csrf_token`); bearer-token clients are not exposed
to CSRF (browsers never attach the header on their own).  Failed logins are rate-limited per user
name and per client address.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import anyio.to_thread
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer

from factory.users import UserStore

SESSION_COOKIE = "fct_session"
LOGIN_CSRF_COOKIE = "fct_login_csrf"
SESSION_HOURS = 12
FAILED_LOGINS_PER_NAME = 5  # within FAILED_LOGIN_WINDOW seconds
FAILED_LOGINS_PER_CLIENT = 20
FAILED_LOGIN_WINDOW = 300

ALL_ROLES = ("annotator", "expert", "operator", "auditor", "client")
HOME = {"annotator": "/queue", "expert": "/arbitrate", "auditor": "/audit", "operator": "/operator",
        "client": "/releases"}

bearer_scheme = HTTPBearer(auto_error=False, description="API token from `factory users add NAME --role ROLE`")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    via: str  # token | session
    csrf: str | None = None


class Authenticator:
    """Resolves the user of a request from its bearer token or its signed session cookie."""

    def __init__(self, store: UserStore, secret: str):
        self.store = store
        self.signer = URLSafeTimedSerializer(secret, salt="factory-session")

    def cookie_value(self, session_id: str) -> str:
        return self.signer.dumps(session_id)

    def session_id(self, request: Request) -> str | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            return self.signer.loads(raw, max_age=SESSION_HOURS * 3600)
        except BadSignature:
            return None

    def cached_user(self, request: Request) -> tuple[bool, User | None]:
        """(True, the user or None) when a bearer token's lookup is cached; (False, None) when `user` must read
        the database (a cache miss, a session cookie)."""
        header = request.headers.get("authorization")
        if not header:
            return False, None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return True, None
        known, u = self.store.cached_token(token.strip())
        return known, (User(u["name"], u["role"], "token") if u else None)

    def user(self, request: Request) -> User | None:
        header = request.headers.get("authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            u = self.store.by_token(token.strip())
            return User(u["name"], u["role"], "token") if u else None
        sid = self.session_id(request)
        if sid is None:
            return None
        s = self.store.session(sid)
        return User(s["name"], s["role"], "session", s["csrf_token"]) if s else None


def check_csrf(user: User, supplied: str | None) -> None:
    """Refuse a cookie-authenticated write without the session's CSRF token."""
    if user.via != "session":
        return
    if not supplied or not user.csrf or not secrets.compare_digest(supplied, user.csrf):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def needs(*roles: str, write: bool = False):
    """FastAPI dependency: the request's user, who must have one of `roles` (401/403 otherwise)."""

    # async: a sync dependency would cost a thread hop per request (the token lookup is cached in memory); a
    # lookup that reads the database (a cache miss, a session) runs in a worker thread, never on the event loop,
    # which would stall every request in flight for the read's round trips
    async def dependency(request: Request,
                         _cred: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> User:
        auth: Authenticator = request.app.state.auth
        known, user = auth.cached_user(request)
        if not known:
            user = await anyio.to_thread.run_sync(auth.user, request)
        if user is None:
            raise HTTPException(401, "not authenticated: send 'Authorization: Bearer <token>' (a token from "
                                     "`factory users add`) or log in at /login",
                                headers={"WWW-Authenticate": "Bearer"})
        if user.role not in roles:
            raise HTTPException(403, f"role '{user.role}' may not do this; it needs one of: {', '.join(roles)}")
        if write:
            check_csrf(user, request.headers.get("x-csrf-token"))
        return user

    return Depends(dependency)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def login_blocked(store: UserStore, name: str, address: str) -> bool:
    return (store.failures(f"name:{name}", FAILED_LOGIN_WINDOW) >= FAILED_LOGINS_PER_NAME
            or store.failures(f"addr:{address}", FAILED_LOGIN_WINDOW) >= FAILED_LOGINS_PER_CLIENT)
