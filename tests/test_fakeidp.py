"""Sign in with Hugging Face, offline: Gradio's real OAuth (authlib's client, the id_token checks, the session
cookie) against tests/fakeidp.py, in a child-process app with a LoginButton and a `whoami(gr.OAuthProfile | None)`
endpoint. Through gradio_client, raw HTTP and (marker `browser`) Chromium clicking the button."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import itsdangerous
import pytest

import fakeidp
from apphost import Server, free_port

gradio_client = pytest.importorskip("gradio_client")

APP = '''
import sys

import gradio as gr


def whoami(profile: gr.OAuthProfile | None) -> str:
    return profile.username if profile is not None else "anonymous"


with gr.Blocks() as demo:
    gr.LoginButton(elem_id="login")
    who = gr.Textbox(label="Signed in as", elem_id="who")
    gr.Button("Who am I?", elem_id="ask").click(whoami, None, who, api_name="whoami")

demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
'''


def start_app(root: Path, env: dict, timeout: float = 120.0) -> Server:
    """The APP script in a child process on a free port (offline), once it serves its page."""
    script, log = root / "oauth_app.py", root / "oauth_app.log"
    script.write_text(APP, encoding="utf-8")
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if k != "SPACE_HOST"}
    child_env |= {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env}
    with open(log, "w", encoding="utf-8") as out:   # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, str(script), str(port)], cwd=root, env=child_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OAuth test app exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2):
                return Server(process, url, log)
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"the OAuth test app did not serve within {timeout:.0f} s: see {log}")


@pytest.fixture(scope="module")
def idp():
    provider = fakeidp.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def app(idp, tmp_path_factory):
    srv = start_app(tmp_path_factory.mktemp("oauth-app"), fakeidp.oauth_env(idp))
    yield srv.url
    srv.stop()


def via_client(url: str, cookie: str | None = None) -> str:
    headers = {"Cookie": cookie} if cookie else None
    return gradio_client.Client(url, headers=headers, verbose=False).predict(api_name="/whoami")


def via_http(url: str, cookie: str | None = None) -> str:
    """POST /gradio_api/call/whoami, then read its event stream. Gradio reads the session from the POST (the
    request that queues the call): the GET needs no cookie."""
    headers = {"Cookie": cookie} if cookie else {}
    queued = httpx.post(f"{url}/gradio_api/call/whoami", json={"data": []}, headers=headers, trust_env=False)
    queued.raise_for_status()
    with httpx.stream("GET", f"{url}/gradio_api/call/whoami/{queued.json()['event_id']}", trust_env=False) as r:
        lines = list(r.iter_lines())
    assert "event: complete" in lines, lines
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))[0]


def session_data(cookie: str) -> dict:
    """The session a Gradio cookie carries: signed by itsdangerous, not encrypted, so anyone holding it can read it."""
    payload = cookie.removeprefix("session=").split(".")[0]
    return json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))


def signed_session(session: dict, secret: str) -> str:
    """A session cookie signed the way Gradio signs its own, with the key derived from `secret`."""
    key = hashlib.sha256((secret + "-v4").encode()).hexdigest()
    payload = base64.b64encode(json.dumps(session).encode())
    return "session=" + itsdangerous.TimestampSigner(key).sign(payload).decode()


def test_anonymous_before_sign_in(app):
    assert via_client(app) == "anonymous"
    assert via_http(app) == "anonymous"


def test_sign_in_as_alice_runs_the_whole_openid_flow(app, idp):
    cookie = fakeidp.sign_in(app, idp, "alice")
    assert via_client(app, cookie) == "alice"
    assert via_http(app, cookie) == "alice"

    authorize = idp.hits("/authorize")[-1].query
    assert authorize["client_id"] == idp.client_id and authorize["scope"] == "openid profile"
    assert authorize["redirect_uri"].startswith(app + "/login/callback?")
    assert authorize["nonce"] and authorize["state"]
    token = idp.hits("/token")[-1]
    assert token.form["grant_type"] == "authorization_code" and token.authorization.startswith("Basic ")
    assert idp.hits("/jwks"), "authlib checked the id_token's signature"
    assert len(idp.hits("/.well-known/openid-configuration")) == 1, "authlib reads the discovery document once"
    assert not idp.hits("/userinfo"), "the profile comes from the id_token, not from /userinfo"

    userinfo = session_data(cookie)["oauth_info"]["userinfo"]
    assert userinfo["nonce"] == authorize["nonce"] and userinfo["iss"] == idp.url
    assert {k: userinfo[k] for k in idp.claims("alice")} == idp.claims("alice")


def test_bob_signs_in_in_a_fresh_session_and_alice_stays_alice(app, idp):
    alice = fakeidp.sign_in(app, idp, "alice")
    bob = fakeidp.sign_in(app, idp, "bob")
    assert alice != bob
    assert via_client(app, bob) == "bob" and via_http(app, bob) == "bob"
    assert via_client(app, alice) == "alice"


def test_sign_out_clears_the_cookie_but_a_copy_keeps_working(app, idp):
    cookie = fakeidp.sign_in(app, idp, "alice")
    left = fakeidp.sign_out(app, cookie)
    assert left == ""
    assert via_client(app, left) == "anonymous" and via_http(app, left) == "anonymous"
    # The session is the cookie (no server-side record), so /logout cannot revoke a copy: it is alice's until the
    # token's expires_at (the IdP's expires_in) or the cookie's 14-day signature age, whichever comes first.
    assert via_http(app, cookie) == "alice"


def test_a_forged_or_broken_cookie_is_anonymous(app, idp):
    cookie = fakeidp.sign_in(app, idp, "alice")
    mallory = session_data(cookie)
    mallory["oauth_info"]["userinfo"] |= {"preferred_username": "mallory", "name": "Mallory"}
    payload, signature = cookie.removeprefix("session=").split(".", 1)
    tampered = "session=" + base64.b64encode(json.dumps(mallory).encode()).decode() + "." + signature
    for forged in ("session=forged", "session=", tampered, signed_session(mallory, "not-the-client-secret")):
        assert via_http(app, forged) == "anonymous", forged
    assert via_client(app, "session=forged") == "anonymous"
    # The one key is the OAuth client secret (Gradio signs with sha256(secret + "-v4")): whoever has it is anyone.
    assert via_http(app, signed_session(mallory, idp.client_secret)) == "mallory"


def test_the_session_cookie_is_secure_httponly_samesite_none_for_14_days(app, idp):
    start = httpx.get(app + "/login/huggingface?_target_url=/", follow_redirects=False, trust_env=False)
    assert start.status_code == 302 and start.headers["location"].startswith(idp.url + "/authorize?")
    (set_cookie,) = start.headers.get_list("set-cookie")
    flags = {part.strip().lower() for part in set_cookie.split(";")[1:]}
    assert flags == {"path=/", "max-age=1209600", "httponly", "samesite=none", "secure"}
    assert list(session_data(set_cookie.split(";")[0])) == ["_state_huggingface_" + start.headers["location"]
                                                             .split("state=")[1].split("&")[0]]
    cookie = fakeidp.sign_in(app, idp, "alice")
    assert len(cookie) < 4096, "browsers drop cookies over 4 KiB"
    assert set(session_data(cookie)) == {"oauth_info"}, "the OAuth state is cleared at the callback"


def test_sign_in_ends_with_the_providers_expires_in(app, idp):
    idp.expires_in = 5
    try:
        cookie = fakeidp.sign_in(app, idp, "alice")
    finally:
        idp.expires_in = 3600
    assert via_http(app, cookie) == "alice"
    time.sleep(max(0.0, session_data(cookie)["oauth_info"]["expires_at"] + 1 - time.time()))
    assert via_http(app, cookie) == "anonymous", "the cookie itself is good for 14 days: Gradio checks expires_at"


def test_the_provider_checks_client_code_and_redirect_uri(idp):
    redirect = "http://127.0.0.1:9/cb"
    assert idp.authorize({"client_id": "other", "redirect_uri": redirect})[0] == 400
    _, headers, _ = idp.authorize({"client_id": idp.client_id, "redirect_uri": redirect, "response_type": "code",
                                   "state": "s"})
    assert "error=access_denied" in headers["Location"] and "state=s" in headers["Location"]

    def code_for(username):
        _, headers, _ = idp.authorize({"client_id": idp.client_id, "redirect_uri": redirect, "response_type": "code",
                                       "login_as": username, "nonce": "n"})
        return headers["Location"].split("code=")[1]

    auth = (idp.client_id, idp.client_secret)
    token = lambda code, uri=redirect, auth=auth: httpx.post(
        idp.url + "/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": uri},
        auth=auth, trust_env=False)
    assert token(code_for("carol"), auth=(idp.client_id, "wrong")).status_code == 401
    assert token(code_for("carol"), uri=redirect + "x").status_code == 400
    code = code_for("carol")
    issued = token(code)
    assert issued.status_code == 200 and token(code).status_code == 400, "a code is redeemed once"
    userinfo = httpx.get(idp.url + "/userinfo", headers={"Authorization": "Bearer " + issued.json()["access_token"]},
                         trust_env=False)
    assert userinfo.json() == idp.claims("carol")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed: run .ci/setup-browser")
def test_a_browser_signs_in_with_the_login_button_and_out_again(app, idp):
    sync_api = pytest.importorskip("playwright.sync_api")
    idp.login_as = "alice"       # the provider's "logged-in user": /authorize names nobody when a browser clicks
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(app)
            button = page.locator("#login")
            sync_api.expect(button).to_have_text("Sign in with Hugging Face")
            button.click()
            sync_api.expect(button).to_have_text("Logout (alice)")
            page.click("#ask")
            sync_api.expect(page.locator("#who textarea")).to_have_value("alice")
            # Chromium keeps and sends a Secure cookie over http://127.0.0.1 (a secure context for it).
            (session,) = [c for c in page.context.cookies() if c["name"] == "session"]
            assert session["secure"] and session["httpOnly"] and session["sameSite"] == "None"
            assert page.url.rstrip("/") == app
            button.click()
            sync_api.expect(button).to_have_text("Sign in with Hugging Face")
            page.click("#ask")
            sync_api.expect(page.locator("#who textarea")).to_have_value("anonymous")
            assert not [c for c in page.context.cookies() if c["name"] == "session"]
            browser.close()
    finally:
        idp.login_as = None
