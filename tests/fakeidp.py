"""Test harness: a local OpenID Connect provider standing in for huggingface.co's, so that Gradio's real OAuth code
(authlib's client, its id_token checks, Gradio's session cookie) runs offline and only the identity provider is fake.

    idp = fakeidp.start()
    app = <start the Gradio app in a child process with env={**os.environ, **fakeidp.oauth_env(idp)}>
    cookie = fakeidp.sign_in(app_url, idp, "alice")          # 'session=…', the header a client then sends
    gradio_client.Client(app_url, headers={"Cookie": cookie}).predict(api_name="/whoami")   # 'alice'
    fakeidp.sign_out(app_url, cookie)                          # '' once Gradio has cleared the cookie

The provider signs in whoever the request names (`login_as` on /authorize, which `sign_in` adds) or else
`idp.login_as` (what a browser's click gets); nobody named: the user "denied" (error=access_denied). Every request it
receives is kept in `idp.requests`.

Why the helpers handle cookies by hand: Gradio's SessionMiddleware sets its `session` cookie `Secure` (and
SameSite=None), and httpx, like any cookie jar that follows the rules, does not send a Secure cookie to http://. A
browser does: Chromium treats http://127.0.0.1 as a secure context. authlib keeps its OAuth `state` and `nonce` in
that same session (keys `_state_huggingface_<state>`), not in a cookie of its own.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

# authlib 1.9 validates id_tokens with joserfc (its own dependency); `authlib.jose` is deprecated there and warns on
# import, so the provider signs with joserfc too.


@dataclass
class Seen:
    """One request the provider received."""
    method: str
    path: str                  # without the query
    query: dict[str, str]
    form: dict[str, str]       # a POST's urlencoded body
    authorization: str | None


@dataclass
class Grant:
    """What an authorization code stands for until /token redeems it (once)."""
    username: str
    nonce: str | None
    redirect_uri: str
    scope: str


@dataclass
class FakeIdP:
    server: ThreadingHTTPServer
    key: RSAKey
    client_id: str
    client_secret: str
    login_as: str | None = None     # who /authorize signs in when the request names nobody (a browser's click)
    expires_in: int = 3600          # seconds; the access token's and the id_token's lifetime
    users: dict[str, dict] = field(default_factory=dict)   # username -> claims that replace the derived ones
    requests: list[Seen] = field(default_factory=list)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)   # access token -> username

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def hits(self, path: str) -> list[Seen]:
        """The requests made to `path` (e.g. "/token"), oldest first."""
        return [r for r in list(self.requests) if r.path == path]

    def claims(self, username: str) -> dict:
        """The profile claims of `username`, shaped like huggingface.co's (`sub` is stable per username)."""
        return {"sub": hashlib.sha256(username.encode()).hexdigest()[:24],
                "preferred_username": username,
                "name": username.title(),
                "picture": f"{self.url}/avatars/{username}.png",
                "profile": f"{self.url}/{username}",
                **self.users.get(username, {})}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # The endpoints, each returning (status, headers, body).

    def discovery(self) -> tuple[int, dict, bytes]:
        return _json(200, {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "userinfo_endpoint": self.url + "/userinfo",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })

    def authorize(self, q: dict[str, str]) -> tuple[int, dict, bytes]:
        if q.get("client_id") != self.client_id or not q.get("redirect_uri"):
            # Never redirect to a redirect_uri of an unknown client (RFC 6749 §4.1.2.1): say so instead.
            return _text(400, f"fakeidp: unknown client_id {q.get('client_id')!r} or no redirect_uri "
                              f"(this provider serves client_id {self.client_id!r})")
        back = {"state": q["state"]} if "state" in q else {}
        username = q.get("login_as") or self.login_as
        if q.get("response_type") != "code":
            back |= {"error": "unsupported_response_type"}
        elif username is None:
            back |= {"error": "access_denied",
                     "error_description": "fakeidp: nobody to sign in: add login_as=<user> or set idp.login_as"}
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = Grant(username, q.get("nonce"), q["redirect_uri"], q.get("scope", ""))
            back |= {"code": code}
        sep = "&" if "?" in q["redirect_uri"] else "?"
        return 302, {"Location": q["redirect_uri"] + sep + urllib.parse.urlencode(back)}, b""

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict, bytes]:
        client = _client_credentials(form, authorization)
        if client != (self.client_id, self.client_secret):
            return _json(401, {"error": "invalid_client", "error_description": f"fakeidp: got client {client}"})
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return _json(400, {"error": "invalid_grant", "error_description": "fakeidp: unknown or used code"})
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(400, {"error": "invalid_grant", "error_description": "fakeidp: redirect_uri differs "
                                                                              "from the one /authorize got"})
        access_token = "fakeidp_" + secrets.token_urlsafe(24)
        self.tokens[access_token] = grant.username
        now = int(time.time())
        claims = {"iss": self.url, "aud": self.client_id, "iat": now, "exp": now + self.expires_in,
                  "auth_time": now, **self.claims(grant.username)}
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        id_token = jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
        return _json(200, {"access_token": access_token, "token_type": "bearer", "expires_in": self.expires_in,
                           "scope": grant.scope, "id_token": id_token})

    def jwks(self) -> tuple[int, dict, bytes]:
        return _json(200, {"keys": [self.key.as_dict(private=False)]})

    def userinfo(self, authorization: str | None) -> tuple[int, dict, bytes]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return _json(401, {"error": "invalid_token"})
        return _json(200, self.claims(self.tokens[token]))


def start(client_id: str = "fakeidp-client", client_secret: str | None = None) -> FakeIdP:
    """Serves the provider on 127.0.0.1 at a free port, in a daemon thread, until `stop()`."""
    idp: FakeIdP

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            split = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(split.query))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            form = dict(urllib.parse.parse_qsl(body))
            auth = self.headers.get("Authorization")
            idp.requests.append(Seen(self.command, split.path, query, form, auth))
            routes = {("GET", "/.well-known/openid-configuration"): idp.discovery,
                      ("GET", "/authorize"): lambda: idp.authorize(query),
                      ("POST", "/token"): lambda: idp.token(form, auth),
                      ("GET", "/jwks"): idp.jwks,
                      ("GET", "/userinfo"): lambda: idp.userinfo(auth)}
            route = routes.get((self.command, split.path))
            status, headers, payload = route() if route else _json(404, {"error": "not_found"})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args):   # quiet
            pass

    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    idp = FakeIdP(ThreadingHTTPServer(("127.0.0.1", 0), Handler), key, client_id,
                  client_secret or secrets.token_urlsafe(24))
    threading.Thread(target=idp.server.serve_forever, daemon=True).start()
    return idp


def oauth_env(idp: FakeIdP) -> dict[str, str]:
    """The environment a child Gradio process needs to run its real (Space) OAuth against `idp`.

    Gradio reads these at import. `SYSTEM=spaces` is what makes `gradio.utils.get_space()` return SPACE_ID (SPACE_ID
    alone is not enough: without it Gradio mocks the login with the machine's HF token). SPACE_HOST is deliberately
    absent (keep it out of the child's environment): with it, Gradio sends https://<SPACE_HOST>/login/callback as the
    redirect_uri instead of the address the request came to."""
    return {"SYSTEM": "spaces", "SPACE_ID": "fakeidp/oauth-test",
            "OAUTH_CLIENT_ID": idp.client_id, "OAUTH_CLIENT_SECRET": idp.client_secret,
            "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": idp.url,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def sign_in(app_url: str, idp: FakeIdP, username: str) -> str:
    """Signs in to the Gradio app at `app_url` as `username` the way a browser would (/login/huggingface ->
    `idp`'s /authorize -> /login/callback, in a fresh session) and returns the Cookie header to send to the app
    afterwards ("session=…")."""
    app_url = app_url.rstrip("/")
    jar: dict[str, str] = {}
    with httpx.Client(trust_env=False, timeout=30) as http:
        login = _step(http, app_url + "/login/huggingface?_target_url=/", jar)
        authorize = login.headers["location"]
        if not authorize.startswith(idp.url + "/authorize"):
            raise RuntimeError(f"/login/huggingface redirected to {authorize!r}, not to {idp.url}/authorize: is the "
                               "app running with fakeidp.oauth_env(idp) (SYSTEM=spaces) in its environment?")
        back = _step(http, authorize + "&" + urllib.parse.urlencode({"login_as": username}), {})
        callback = back.headers["location"]
        if not callback.startswith(app_url + "/login/callback?") or "code=" not in callback:
            raise RuntimeError(f"{idp.url}/authorize sent the browser to {callback!r}, not to a code for "
                               f"{app_url}/login/callback")
        _step(http, callback, jar)
    if "session" not in jar:
        raise RuntimeError(f"{app_url}/login/callback set no session cookie")
    return _cookie_header(jar)


def sign_out(app_url: str, cookie: str) -> str:
    """Visits the app's /logout with `cookie` and returns the Cookie header left afterwards ("" once Gradio has
    cleared the session). Gradio's session is a signed cookie, not a server-side record: the old cookie value keeps
    working for whoever still holds it."""
    jar = dict(c.split("=", 1) for c in cookie.split("; ") if "=" in c)
    with httpx.Client(trust_env=False, timeout=30) as http:
        _step(http, app_url.rstrip("/") + "/logout?_target_url=/", jar)
    return _cookie_header(jar)


def _step(http: httpx.Client, url: str, jar: dict[str, str]) -> httpx.Response:
    """One GET that must answer with a redirect; sends `jar` and takes the Set-Cookie headers into it."""
    headers = {"Cookie": _cookie_header(jar)} if jar else {}
    response = http.get(url, headers=headers, follow_redirects=False)
    if response.status_code not in (302, 303, 307):
        raise RuntimeError(f"GET {url} answered {response.status_code}, not a redirect: {response.text[:500]}")
    for line in response.headers.get_list("set-cookie"):
        for name, morsel in SimpleCookie(line).items():
            expired = bool(morsel["expires"]) and parsedate_to_datetime(morsel["expires"]).timestamp() < time.time()
            if expired or morsel["max-age"] == "0":
                jar.pop(name, None)
            else:
                jar[name] = morsel.value
    return response


def _cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in jar.items())


def _client_credentials(form: dict[str, str], authorization: str | None) -> tuple[str | None, str | None]:
    """(client_id, client_secret) from HTTP Basic (authlib's default) or from the form (client_secret_post)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return urllib.parse.unquote(user), urllib.parse.unquote(password)
    return form.get("client_id"), form.get("client_secret")


def _json(status: int, body: dict) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, json.dumps(body).encode()


def _text(status: int, body: str) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, body.encode()
