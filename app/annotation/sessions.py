"""Sign-in sessions recorded server-side, so that "Log out" and an admin's revocation end a session for good.

Gradio's sign-ins keep nothing we could revoke: the password login's cookie holds a random token that only the
instance that issued it knows (in memory), and the Hugging Face sign-in is a signed cookie holding the OAuth
tokens, which Gradio's /logout only clears in the browser — a copy keeps working until the token expires. So
every request that carries a sign-in passes `SessionGuard` (an ASGI middleware, added at launch) first:

* the session is recorded in the store's `sessions` table the first time it is seen (its `id` is the sha256 of
  the session's secret — the login token, or the OAuth access token — never the secret itself), with the
  account, the method, when it was created, last seen (written at most once a minute) and expires;
* a revoked session's credentials are taken out of the request before Gradio sees it, so it is nobody signed
  in everywhere: `identify`, Gradio's login page, every endpoint. All instances sharing a PostgreSQL database
  agree, since they read the same table;
* /logout revokes the session (for the password login, like Gradio, all of that account's password sessions
  unless `?all_session=false`) before Gradio clears the cookie.

From Python::

    book = SessionBook(store)
    book.sessions(account="bob")                 # live ones, most recently seen first
    book.revoke_account("bob", by="alice")       # every live session of bob's; returns how many
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, fields
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from .backends import DatabaseUnavailable
from .store import AnnotationStore, parse_time, utc_now

log = logging.getLogger(__name__)

TOUCH_EVERY = dt.timedelta(minutes=1)     # `last_seen` is written at most this often per session
METHODS = ("password", "huggingface")


def session_id(secret: str) -> str:
    """What the table keeps of a session's secret: its sha256, in hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str                  # sha256 of the secret
    account: str
    method: str              # "password" or "huggingface"
    created_at: str          # times: canonical UTC text (app.annotation.store.utc_now)
    last_seen: str
    expires_at: str | None   # None: until the server forgets it (password logins)
    revoked_at: str | None
    revoked_by: str


class SessionBook:
    """The `sessions` table of a store: record, check, list and revoke sign-in sessions."""

    def __init__(self, store: AnnotationStore):
        self.store = store

    def admit(self, secret: str, account: str, method: str, expires_at: str | None = None) -> bool:
        """Whether the session with this secret may act as `account`: False once revoked (or recorded for
        another account). Records a session seen for the first time; refreshes `last_seen` at most once a
        minute, so a request costs one read."""
        sid = session_id(secret)
        rows = self.store.read("SELECT account, last_seen, revoked_at FROM sessions WHERE id=?", (sid,))
        if not rows:
            now = utc_now()
            with self.store.transaction() as conn:
                conn.execute("INSERT INTO sessions (id, account, method, created_at, last_seen, expires_at) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                             (sid, account, method, now, now, expires_at))
            rows = self.store.read("SELECT account, last_seen, revoked_at FROM sessions WHERE id=?", (sid,))
        stored, last_seen, revoked_at = rows[0][0], rows[0][1], rows[0][2]
        if revoked_at is not None or stored != account:
            return False
        now = dt.datetime.now(dt.timezone.utc)
        if last_seen < parse_time(now - TOUCH_EVERY):
            with self.store.transaction() as conn:
                conn.execute("UPDATE sessions SET last_seen=? WHERE id=?", (parse_time(now), sid))
        return True

    def revoke_secret(self, secret: str, *, by: str, account: str = "", method: str = "") -> bool:
        """Revoke the session with this secret (recording it revoked if it was never seen, so a copy of it
        stays dead); False when it was revoked already."""
        now = utc_now()
        with self.store.transaction() as conn:
            conn.execute("INSERT INTO sessions (id, account, method, created_at, last_seen) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (id) DO NOTHING", (session_id(secret), account, method, now, now))
            return conn.execute("UPDATE sessions SET revoked_at=?, revoked_by=? WHERE id=? AND revoked_at IS NULL",
                                (now, by, session_id(secret))).rowcount > 0

    def revoke(self, sid: str, *, by: str) -> bool:
        """Revoke one session by its id (as `sessions` lists it); False when there is no live one."""
        with self.store.transaction() as conn:
            return conn.execute("UPDATE sessions SET revoked_at=?, revoked_by=? WHERE id=? AND revoked_at IS NULL",
                                (utc_now(), by, sid)).rowcount > 0

    def revoke_account(self, account: str, *, by: str, method: str | None = None) -> int:
        """Revoke every live session of `account` (of one `method`, when given); returns how many."""
        sql, params = "UPDATE sessions SET revoked_at=?, revoked_by=? WHERE account=? AND revoked_at IS NULL", \
            [utc_now(), by, account]
        if method:
            sql += " AND method=?"
            params.append(method)
        with self.store.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def sessions(self, account: str | None = None, *, revoked: bool = False) -> list[Session]:
        """Live sessions (not revoked, not expired), most recently seen first; of one account when given;
        `revoked`: the revoked ones instead."""
        if revoked:
            clauses, params = ["revoked_at IS NOT NULL"], []
        else:
            clauses, params = ["revoked_at IS NULL", "(expires_at IS NULL OR expires_at > ?)"], [utc_now()]
        if account:
            clauses.append("account = ?")
            params.append(account)
        rows = self.store.read(f"SELECT * FROM sessions WHERE {' AND '.join(clauses)} ORDER BY last_seen DESC, id",
                               params)
        return [Session(**{f.name: r[f.name] for f in fields(Session)}) for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# The request side: which session a request carries, and the middleware that checks it


@dataclass(frozen=True)
class Credential:
    """The sign-in a request carries: its secret, the account Gradio would take it for, and how it expires."""
    secret: str
    account: str
    method: str
    expires_at: str | None = None


def password_cookies(gradio_app: Any) -> tuple[str, str]:
    """The names of Gradio's login cookies (both hold the same token; browsers drop the Secure one on http)."""
    return f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}"


def credential(scope: dict, method: str) -> Credential | None:
    """The sign-in of an HTTP request's scope, as Gradio reads it: the login token of `auth=` (the account from
    the Gradio app's `tokens`), or the OAuth session's `oauth_info` (which Starlette's SessionMiddleware put in
    the scope). None when it carries none."""
    if method == "password":
        gradio_app = scope.get("app")
        if not hasattr(gradio_app, "tokens") or not hasattr(gradio_app, "cookie_id"):
            return None
        cookies = HTTPConnection(scope).cookies
        secure, unsecure = password_cookies(gradio_app)
        token = cookies.get(secure) or cookies.get(unsecure)
        account = gradio_app.tokens.get(token) if token else None
        return Credential(token, str(account or ""), method) if token else None
    if method == "huggingface":
        session = scope.get("session")
        info = session.get("oauth_info") if isinstance(session, dict) else None
        if not isinstance(info, dict):
            return None
        secret = info.get("access_token") or json.dumps(info, sort_keys=True, default=str)
        account = str((info.get("userinfo") or {}).get("preferred_username") or "")
        expires = info.get("expires_at")
        when = parse_time(dt.datetime.fromtimestamp(expires, dt.timezone.utc)) \
            if isinstance(expires, (int, float)) else None
        return Credential(str(secret), account, method, when)
    return None


def without_credential(scope: dict, method: str) -> dict:
    """The scope with its sign-in taken out: Gradio's login cookies dropped from the Cookie header, or
    `oauth_info` popped from the session (SessionMiddleware then rewrites the browser's cookie without it)."""
    if method == "huggingface":
        scope["session"].pop("oauth_info", None)
        return scope
    names = set(password_cookies(scope["app"]))
    kept = {k: v for k, v in HTTPConnection(scope).cookies.items() if k not in names}
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"cookie"]
    if kept:
        headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in kept.items()).encode("latin-1")))
    return {**scope, "headers": headers}


class SessionGuard:
    """ASGI middleware for the Gradio app (`blocks.launch(app_kwargs={"middleware": [Middleware(SessionGuard,
    book=…, method=…)]})`): records every sign-in session it sees, lets a revoked one through as nobody signed
    in, and revokes the session on /logout before Gradio's own /logout runs."""

    def __init__(self, app: Any, *, book: SessionBook, method: str):
        if method not in METHODS:
            raise ValueError(f"SessionGuard guards the sign-in methods {', '.join(METHODS)}, not {method!r}")
        self.app, self.book, self.method = app, book, method

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            cred = credential(scope, self.method)    # no store call: most requests stop here
            if cred is not None:
                scope = await run_in_threadpool(self.check, scope, cred)   # the store blocks: not on the loop
        await self.app(scope, receive, send)

    def check(self, scope: dict, cred: Credential) -> dict:
        """The scope to serve: as it came, or without the credentials of a revoked session. A live session's
        /logout revokes it (Gradio's own /logout then clears the cookie)."""
        try:
            if cred.account and not self.book.admit(cred.secret, cred.account, cred.method, cred.expires_at):
                return without_credential(scope, self.method)
            # (no account: a login token this instance never issued, which Gradio refuses anyway)
            if scope.get("path", "").rstrip("/").endswith("/logout"):
                self.log_out(scope, cred)
        except DatabaseUnavailable as e:
            # a session that cannot be checked is nobody signed in (what needs no sign-in keeps working)
            log.warning("sign-in sessions cannot be checked, serving as signed out: %s", e)
            return without_credential(scope, self.method)
        return scope

    def log_out(self, scope: dict, cred: Credential) -> None:
        self.book.revoke_secret(cred.secret, by=cred.account, account=cred.account, method=cred.method)
        every = HTTPConnection(scope).query_params.get("all_session", "true").lower() not in ("false", "0", "no", "off")
        if self.method == "password" and every and cred.account:
            # Gradio's /logout ends all of the account's password logins (all_session=True): so do we, on every
            # instance
            self.book.revoke_account(cred.account, by=cred.account, method="password")
