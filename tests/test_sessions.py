"""Sign-out that signs out (issue 21): sign-in sessions recorded in the store (app/annotation/sessions.py), revoked
by "Log out" and by an admin, and a revoked session is nobody signed in — for Gradio's password login and for
"Sign in with Hugging Face" alike. Unit tests on a real SQLite file (and PostgreSQL under .ci/with-postgres), then
the real app (`python app.py --demo`) over HTTP: a cookie copied before /logout, or before an admin's revocation,
saves nothing afterwards."""
from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from http.cookies import SimpleCookie
from types import SimpleNamespace

import pytest

from app.annotation.backends import DatabaseUnavailable
from app.annotation.rights import Refused, identify
from app.annotation.sessions import Credential, SessionBook, SessionGuard, credential, session_id, \
    without_credential
from app.annotation.store import AnnotationStore, parse_time
from app.annotation.tabs.sessions import revoke_sessions, show_sessions
from app.settings import Settings


@pytest.fixture
def store(databases):
    with AnnotationStore(databases("sessions.db")) as s:
        yield s


def rows(store) -> list[tuple]:
    return [tuple(r) for r in store.read("SELECT id, account, method, revoked_at IS NOT NULL, revoked_by "
                                         "FROM sessions ORDER BY account, created_at")]


# ---------------------------------------------------------------------------------------------------------------
# The book


def test_sessions_are_recorded_by_hash_and_revoked(store):
    book = SessionBook(store)
    assert book.admit("tok-a1", "alice", "password") and book.admit("tok-a1", "alice", "password")
    assert book.admit("tok-a2", "alice", "password") and book.admit("tok-b1", "bob", "huggingface",
                                                                    "2999-01-01T00:00:00.000000Z")
    assert session_id("tok-a1") == hashlib.sha256(b"tok-a1").hexdigest()
    assert rows(store) == [(session_id("tok-a1"), "alice", "password", 0, ""),
                           (session_id("tok-a2"), "alice", "password", 0, ""),
                           (session_id("tok-b1"), "bob", "huggingface", 0, "")]
    assert not any("tok-" in str(v) for r in store.read("SELECT * FROM sessions") for v in tuple(r))  # no secret
    assert sorted(s.account for s in book.sessions()) == ["alice", "alice", "bob"]
    assert book.admit("tok-a1", "mallory", "password") is False    # a secret is one account's
    assert book.revoke_secret("tok-a1", by="alice") is True and book.revoke_secret("tok-a1", by="x") is False
    assert book.admit("tok-a1", "alice", "password") is False      # for good
    assert [s.id for s in book.sessions("alice")] == [session_id("tok-a2")]
    assert [s.revoked_by for s in book.sessions("alice", revoked=True)] == ["alice"]
    assert book.revoke_account("alice", by="root") == 1 and book.admit("tok-a2", "alice", "password") is False
    assert book.revoke(session_id("tok-b1"), by="root") is True and book.revoke(session_id("tok-b1"), by="r") is False
    assert book.sessions() == []
    # a secret revoked before it was ever seen (a /logout on another instance) stays dead when it comes
    assert book.revoke_secret("tok-never-seen", by="carol", account="carol", method="password")
    assert book.admit("tok-never-seen", "carol", "password") is False


def test_last_seen_is_written_at_most_once_a_minute_and_expired_sessions_are_not_listed(store):
    book = SessionBook(store)
    book.admit("tok", "alice", "password")
    first = book.sessions()[0].last_seen
    book.admit("tok", "alice", "password")
    assert book.sessions()[0].last_seen == first                   # within the minute: no write
    old = parse_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
    with store.transaction() as conn:
        conn.execute("UPDATE sessions SET last_seen=?", (old,))
    book.admit("tok", "alice", "password")
    assert book.sessions()[0].last_seen > first
    book.admit("gone", "bob", "huggingface", "2000-01-01T00:00:00.000000Z")
    assert [s.account for s in book.sessions()] == ["alice"]


def test_admin_handlers_list_and_revoke(store):
    book = SessionBook(store)
    for secret, who in (("a1", "alice"), ("b1", "bob"), ("b2", "bob")):
        book.admit(secret, who, "password")
    settings = Settings(sign_in="password", users={"alice": "pw", "bob": "pw"}, admins=frozenset({"alice"}))
    alice, bob = (identify(SimpleNamespace(username=n), settings) for n in ("alice", "bob"))
    with pytest.raises(Refused, match="Revoking sign-in sessions is for admins"):
        revoke_sessions(store, bob, "alice")
    with pytest.raises(Refused, match="Listing sign-in sessions is for admins"):
        show_sessions(store, bob, "")
    assert list(show_sessions(store, alice, "bob").frame["Account"]) == ["bob", "bob"]
    shown = revoke_sessions(store, alice, " bob ")
    assert "Revoked 2 session(s) of bob" in shown.message and shown.frame.empty
    assert [r[1:] for r in rows(store)] == [("alice", "password", 0, ""), ("bob", "password", 1, "alice"),
                                            ("bob", "password", 1, "alice")]
    with pytest.raises(ValueError, match="Type the account"):
        revoke_sessions(store, alice, "")


# ---------------------------------------------------------------------------------------------------------------
# The request side, on scopes as Starlette and Gradio make them


def password_scope(token: str, tokens: dict, path: str = "/gradio_api/queue/join", other: str = "") -> dict:
    gradio_app = SimpleNamespace(cookie_id="xyz", tokens=tokens)
    cookie = f"access-token-unsecure-xyz={token}" + (f"; {other}" if other else "")
    return {"type": "http", "path": path, "query_string": b"", "app": gradio_app,
            "headers": [(b"host", b"x"), (b"cookie", cookie.encode())]}


def test_the_guard_takes_a_revoked_sessions_credentials_out(store):
    book = SessionBook(store)
    guard = SessionGuard(lambda *a: None, book=book, method="password")
    scope = password_scope("tok", {"tok": "bob"}, other="theme=dark")
    cred = credential(scope, "password")
    assert cred == Credential("tok", "bob", "password")
    assert guard.check(scope, cred) is scope                        # live: served as it came, and recorded
    book.revoke_account("bob", by="alice")
    served = guard.check(scope, cred)
    assert credential(served, "password") is None
    assert dict(served["headers"])[b"cookie"] == b"theme=dark"      # the other cookies stay
    # Hugging Face: the OAuth session loses oauth_info (SessionMiddleware then rewrites the cookie)
    info = {"access_token": "hf_secret", "expires_at": 4102444800, "userinfo": {"preferred_username": "carol"}}
    hf = {"type": "http", "path": "/", "headers": [], "session": {"oauth_info": info, "other": 1}}
    cred = credential(hf, "huggingface")
    assert (cred.secret, cred.account, cred.expires_at) == ("hf_secret", "carol", "2100-01-01T00:00:00.000000Z")
    hf_guard = SessionGuard(lambda *a: None, book=book, method="huggingface")
    assert hf_guard.check(hf, cred)["session"] == {"oauth_info": info, "other": 1}
    book.revoke_secret("hf_secret", by="carol")
    assert without_credential(hf, "huggingface")["session"] == {"other": 1}


def test_log_out_revokes_the_session_and_like_gradio_all_of_the_accounts_logins(store):
    book = SessionBook(store)
    guard = SessionGuard(lambda *a: None, book=book, method="password")
    tokens = {"one": "bob", "two": "bob", "three": "alice"}
    for token in tokens:
        guard.check(password_scope(token, tokens), credential(password_scope(token, tokens), "password"))
    single = password_scope("one", tokens, path="/logout")
    single["query_string"] = b"all_session=false"
    guard.check(single, credential(single, "password"))
    assert [s.id for s in book.sessions("bob")] == [session_id("two")]
    every = password_scope("two", tokens, path="/logout")
    guard.check(every, credential(every, "password"))
    assert book.sessions("bob") == [] and [s.account for s in book.sessions()] == ["alice"]
    # a revoked copy's /logout has no power left: it is served as nobody (alice's session untouched)
    stale = password_scope("one", {**tokens, "one": "alice"}, path="/logout")
    assert credential(guard.check(stale, credential(stale, "password")), "password") is None
    assert [s.account for s in book.sessions()] == ["alice"]


def test_a_session_that_cannot_be_checked_is_nobody():
    class DatabaseDown:
        def admit(self, *args, **kwargs):
            raise DatabaseUnavailable("the database at postgresql://db cannot be reached")

    guard = SessionGuard(lambda *a: None, book=DatabaseDown(), method="password")
    scope = password_scope("tok", {"tok": "bob"})
    assert credential(guard.check(scope, credential(scope, "password")), "password") is None


# ---------------------------------------------------------------------------------------------------------------
# The real app behind the password login


USERS = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture(scope="module")
def password_app(tmp_path_factory):
    import apphost
    root = tmp_path_factory.mktemp("sessions-password")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()), "MT5_STUDIO_ADMINS": "alice"}
    srv = apphost.start(root / "server.log", env=env)
    yield srv, root / "a.db"
    srv.stop()


def login_cookie(url: str, user: str) -> str:
    """POST /login as a browser does; the Cookie header a client then sends (the token, copied)."""
    import httpx
    r = httpx.post(url + "/login", data={"username": user, "password": USERS[user]}, trust_env=False)
    assert r.status_code == 200, r.text
    jar = {}
    for line in r.headers.get_list("set-cookie"):
        jar |= {name: morsel.value for name, morsel in SimpleCookie(line).items()}
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def annotations(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, annotator, json_extract(scores, '$.likert') FROM annotations "
                            "ORDER BY id").fetchall()


def sessions_rows(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT account, method, revoked_at IS NOT NULL, revoked_by FROM sessions "
                            "ORDER BY created_at").fetchall()


def save(client, text: str):
    return client.predict("summarization", "demo/m", text, "out", 4, None, [], "", "", api_name="/annotate")


def test_a_copied_login_cookie_saves_nothing_after_log_out(password_app):
    import httpx
    from gradio_client import Client

    srv, db = password_app
    cookie = login_cookie(srv.url, "bob")
    client = Client(srv.url, headers={"Cookie": cookie}, verbose=False)
    assert save(client, "before")["id"]
    before = annotations(db)
    assert ("bob", "password", 0, "") in sessions_rows(db)
    out = httpx.get(srv.url + "/logout", headers={"Cookie": cookie}, follow_redirects=False, trust_env=False)
    assert out.status_code == 302
    assert ("bob", "password", 1, "bob") in sessions_rows(db)
    with pytest.raises(Exception):
        save(client, "after")        # the copy of the cookie: refused (Gradio's login guard answers 401)
    assert httpx.get(srv.url + "/config", headers={"Cookie": cookie}, trust_env=False).status_code == 401
    assert annotations(db) == before


def test_an_admin_revokes_an_accounts_sessions(password_app):
    from gradio_client import Client

    from rawcall import RawSession

    srv, db = password_app
    bob = Client(srv.url, headers={"Cookie": login_cookie(srv.url, "bob")}, verbose=False)
    assert save(bob, "bob's")["id"]
    before = annotations(db)
    page = RawSession.login(srv.url, "bob", USERS["bob"])
    assert "is for admins" in page.text("sessions_revoke", ["alice"])      # bob may not
    admin = RawSession.login(srv.url, "alice", USERS["alice"])
    assert "live session(s) of bob" in admin.text("sessions_show", ["bob"])
    assert "Revoked 2 session(s) of bob" in admin.text("sessions_revoke", ["bob"])
    with pytest.raises(Exception):
        save(bob, "bob again")
    assert page.call("sessions_show", ["bob"]).get("status") == 401
    assert annotations(db) == before
    again = Client(srv.url, auth=("bob", USERS["bob"]), verbose=False)    # bob signs in again and goes on
    assert save(again, "bob, signed in again")["id"]
    assert "live session(s)" in admin.text("sessions_show", [""])          # alice is still signed in


# ---------------------------------------------------------------------------------------------------------------
# The real app behind "Sign in with Hugging Face" (Gradio's real OAuth against tests/fakeidp.py)


@pytest.fixture(scope="module")
def oauth_app(tmp_path_factory):
    import apphost
    import fakeidp
    idp = fakeidp.start()
    root = tmp_path_factory.mktemp("sessions-oauth")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_ADMINS": "alice", **fakeidp.oauth_env(idp)}
    srv = apphost.start(root / "server.log", env=env)
    yield srv, root / "a.db", idp
    srv.stop()
    idp.stop()


def test_a_copied_hugging_face_cookie_saves_nothing_after_log_out(oauth_app):
    import fakeidp
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from rawcall import RawSession

    srv, db, idp = oauth_app
    cookie = fakeidp.sign_in(srv.url, idp, "bob")
    client = Client(srv.url, headers={"Cookie": cookie}, verbose=False)
    assert save(client, "bob via hf")["id"]
    before = annotations(db)
    assert fakeidp.sign_out(srv.url, cookie) == ""                  # Gradio clears the browser's cookie ...
    assert ("bob", "huggingface", 1, "bob") in sessions_rows(db)
    with pytest.raises(AppError, match="Not saved: Not signed in"):
        save(Client(srv.url, headers={"Cookie": cookie}, verbose=False), "with the copy")   # ... and the copy
    assert annotations(db) == before

    # an admin revokes: bob's live session (signed in again) is nobody on its next request
    bob = Client(srv.url, headers={"Cookie": fakeidp.sign_in(srv.url, idp, "bob")}, verbose=False)
    assert save(bob, "bob again")["id"]
    before = annotations(db)
    admin = RawSession(srv.url, headers={"Cookie": fakeidp.sign_in(srv.url, idp, "alice")})
    assert "Revoked 1 session(s) of bob" in admin.text("sessions_revoke", ["bob"])
    with pytest.raises(AppError, match="Not saved: Not signed in"):
        save(bob, "after revocation")
    assert annotations(db) == before
