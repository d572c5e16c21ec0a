"""Entry point: settings, demo checkpoints when needed, the Blocks with one tab per task, and launch."""
from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from . import api
from .annotation import campaign_api
from .annotation.api import mount as mount_annotation_api
from .annotation.rights import identify
from .annotation.sessions import METHODS, SessionBook, SessionGuard
from .assets import Assets, load_assets
from .context import AppContext
from .demo import build_demo, hub_unavailable
from .files import start_sweeper
from .settings import UPLOAD_MAX_AGE_S, Settings
from .annotation.backends import DatabaseUnavailable
from .annotation.store import AnnotationStore
from .annotation.sync import start_sync, sync_status
from .annotation.tabs import annotations, campaign, compare, panel as annotation_panel, sessions as sessions_tab
from .annotation.tabs.identity import AnnotatorName
from .tabs import task_tabs
from .tabs.common import TabHandle
from .tasklist import TASKS

log = logging.getLogger("mt5studio")


@dataclass
class App:
    blocks: gr.Blocks
    handles: dict[str, TabHandle]
    context: AppContext
    store: AnnotationStore | None = None


def build_app(ctx: AppContext, demo_reason: str = "",
              extra_tabs: list[tuple[str, Callable[[AppContext, dict[str, TabHandle]], None]]] = (),
              store: AnnotationStore | None = None) -> App:
    """Lays out the page. `ctx.panels` are mounted under every result; `extra_tabs` (title, build(ctx,
    handles)) come after the task tabs. With a `store`, the annotation panel goes under every result and the
    Annotations and Batch tabs and the /annotate and /export endpoints are added."""
    annotator = AnnotatorName()   # one name in every annotator box of the page
    if store is not None:
        annotation_panel.register(ctx, store, annotator)  # before the task tabs, which mount ctx.panels in their slots
        extra_tabs = [("Compare", lambda c, h: compare.build(c, store, annotator)),
                      ("Annotations", lambda c, h: annotations.build(c, store)),
                      ("Batch", lambda c, h: compare.build_batch_tab(c, store, annotator)),
                      ("Campaigns", lambda c, h: campaign.build(c, store, annotator)), *extra_tabs]
        if ctx.settings.sign_in:
            extra_tabs.append(("Sessions", lambda c, h: sessions_tab.build(store, c.settings)))
    # Uploads are read once (a batch file goes into the database at once): an hour later they are deleted.
    with gr.Blocks(title="mT5 Studio", delete_cache=(UPLOAD_MAX_AGE_S, UPLOAD_MAX_AGE_S)) as blocks:
        gr.Markdown(ctx.assets.help["header"], elem_classes=["header"])
        if store is not None and ctx.settings.protected:
            sign_in_row(ctx.settings, blocks)
        if ctx.demo:
            gr.Markdown(ctx.assets.help["demo_banner"].format(reason=demo_reason), elem_classes=["demo-banner"],
                        elem_id="demo-banner")
        api.register(ctx)  # first, so the stable endpoint names are theirs
        if store is not None:
            mount_annotation_api(store, ctx.settings)  # /annotate, /export and /import, with rights
            compare.mount(store, ctx.settings)   # /compare, /export_comparisons and /import_comparisons
            campaign_api.mount(store, ctx.settings)   # /campaign_create, _next, _submit, _results, _export, ...
        handles: dict[str, TabHandle] = {}
        with gr.Tabs():
            for tab in task_tabs():
                task = TASKS[tab.TASK]
                with gr.Tab(task.title, id=task.name, elem_id=f"tab-{task.name}"):
                    handles[task.name] = tab.build(ctx)
            for title, build in extra_tabs:
                with gr.Tab(title):
                    build(ctx, handles)
        annotator.link(blocks, ctx.settings)   # after every tab: the boxes are all known
        prefill, inputs, outputs = handles["summarization"].extra["prefill"]
        blocks.load(prefill, inputs, outputs, api_visibility="private")
    return App(blocks, handles, ctx, store)


def sign_in_row(settings: Settings, blocks: gr.Blocks) -> None:
    """Who is signed in (or how to sign in), with the Hugging Face login button on a Space with OAuth and a
    log-out link behind the password login."""
    with gr.Row(elem_id="sign-in-row"):
        line = gr.Markdown(elem_id="signed-in")
        if settings.sign_in == "huggingface":
            gr.LoginButton(elem_id="login-button", scale=0)
        elif settings.sign_in == "password":
            gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout-button")

    def who(request: gr.Request = None) -> str:
        return identify(request, settings).label()

    blocks.load(who, None, line, api_visibility="private", queue=False)


def password_check(settings: Settings) -> Callable[[str, str], bool] | None:
    """Gradio's `auth=` for the "password" sign-in: a constant-time comparison with the configured users."""
    if settings.sign_in != "password":
        return None
    users = {name: hashlib.sha256(pw.encode("utf-8")).digest() for name, pw in settings.users.items()}

    def check(username: str, password: str) -> bool:
        want = users.get(username)
        got = hashlib.sha256(str(password).encode("utf-8")).digest()
        return want is not None and hmac.compare_digest(want, got)

    return check


def prepare(demo_flag: bool, settings: Settings | None = None, assets: Assets | None = None) -> tuple[AppContext, str]:
    """The context to build the app with; builds the demo checkpoints when asked, or when the Hub is out of
    reach and the default checkpoints are not cached. Returns (context, why demo mode is on)."""
    settings = settings or Settings.from_env()
    assets = assets or load_assets()
    reason = ""
    if demo_flag or settings.demo:
        reason = "Started with --demo."
    elif hub_unavailable(assets, settings.offline):
        reason = "The Hugging Face Hub cannot be reached from here and the default checkpoints are not cached."
        # Fail fast on unknown ids instead of retrying the network for each one: the cache reads local files only.
        settings = replace(settings, offline=True)
    if reason:
        assets = assets.with_demo_models(build_demo(assets, settings.demo_dir))
    return AppContext.create(settings, assets, demo=bool(reason)), reason


def session_guard(app: App) -> list[Middleware]:
    """The middleware that records sign-in sessions in the store and signs revoked ones out (Log out, an admin):
    app.annotation.sessions. None without a store or a sign-in method."""
    method = app.context.settings.sign_in
    if app.store is None or method not in METHODS:
        return []
    return [Middleware(SessionGuard, book=SessionBook(app.store), method=method)]


def launch(app: App, host: str | None = None, port: int | None = None, **options) -> None:
    app.blocks.queue(default_concurrency_limit=app.context.settings.concurrency, max_size=256)
    auth = password_check(app.context.settings)
    if auth is not None:
        options.setdefault("auth", auth)
        options.setdefault("auth_message", "mT5 Studio: log in with the user name and password the owner gave you.")
    app_kwargs = dict(options.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), *session_guard(app)]
    options.setdefault("mcp_server", app.context.settings.mcp)
    app.blocks.launch(server_name=host, server_port=port, css=app.context.assets.css,
                      max_file_size=app.context.settings.max_file_bytes, app_kwargs=app_kwargs, **options)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mT5 Studio: the Gradio app")
    ap.add_argument("--demo", action="store_true", help="tiny random-weight checkpoints, built locally (offline)")
    ap.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or GRADIO_SERVER_NAME)")
    ap.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:   # first, so a wrong MT5_STUDIO_DB is reported at once
        store = AnnotationStore()  # $MT5_STUDIO_DB (a file or a postgresql:// URL), /data on a Space, else data/
    except (ValueError, DatabaseUnavailable) as e:
        log.error("cannot open the annotation store: %s", e)   # the message says what to check; no traceback
        return 2
    ctx, reason = prepare(args.demo)
    # visitors' files and uploads: what a previous run left, then on a schedule
    start_sweeper(ctx.settings.files, uploads=Path(get_upload_folder()))
    if reason:
        log.info("demo mode: %s", reason)
    sync = start_sync(store)   # pushes to a dataset repo only when MT5_STUDIO_DATASET_REPO and HF_TOKEN are set
    log.info("annotations: %s; %s", store.location, sync_status(sync))
    launch(build_app(ctx, reason, store=store), args.host, args.port)
    return 0
