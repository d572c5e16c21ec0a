"""The Sessions tab, for admins: an account's live sign-in sessions, and revoking them (app.annotation.sessions).
A revoked session is signed out on its next request, on every instance sharing the database."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ...tabs.common import status_html
from ..rights import Identity, identify, require_admin
from ..sessions import Session, SessionBook
from ..store import AnnotationStore

COLUMNS = ["Session", "Account", "Sign-in", "Signed in", "Last seen", "Expires"]


@dataclass(frozen=True)
class Shown:
    """What the tab shows after a handler: the sessions listed and a status line."""
    frame: pd.DataFrame
    message: str
    kind: str = "info"     # status_html's kind: info, warn or error


def sessions_frame(sessions: list[Session]) -> pd.DataFrame:
    """One row per session: the first 12 hex digits of its id (never the secret), who, how, and its times."""
    return pd.DataFrame([[s.id[:12], s.account, s.method, _minute(s.created_at), _minute(s.last_seen),
                          _minute(s.expires_at) or "on sign-out"] for s in sessions], columns=COLUMNS)


def _minute(time: str | None) -> str:
    """Canonical UTC text to the minute, for the table."""
    return (time or "")[:16].replace("T", " ")


def show_sessions(store: AnnotationStore, ident: Identity, account: Any) -> Shown:
    """The live sessions of `account` (everyone's when empty); for admins."""
    require_admin(ident, "Listing sign-in sessions")
    name = str(account or "").strip()
    live = SessionBook(store).sessions(name or None)
    whose = f" of {name}" if name else ""
    return Shown(sessions_frame(live), f"{len(live)} live session(s){whose}.")


def revoke_sessions(store: AnnotationStore, ident: Identity, account: Any) -> Shown:
    """Revoke every live session of `account`; for admins. The account signs in again to go on."""
    require_admin(ident, "Revoking sign-in sessions")
    name = str(account or "").strip()
    if not name:
        raise ValueError("Type the account whose sessions to revoke.")
    n = SessionBook(store).revoke_account(name, by=ident.user)
    return Shown(sessions_frame(SessionBook(store).sessions(name)),
                 f"Revoked {n} session(s) of {name}: signed out on their next request; they sign in again to "
                 "go on.")


@dataclass
class Layout:
    account: gr.Textbox
    show: gr.Button
    revoke: gr.Button
    table: gr.Dataframe
    status: gr.HTML


def layout() -> Layout:
    gr.Markdown("Sign-in sessions (admins): who is signed in, and signing an account out everywhere.")
    with gr.Row():
        account = gr.Textbox(label="Account", placeholder="empty: every account", elem_id="sessions-account")
        show = gr.Button("Show live sessions", elem_id="sessions-show", scale=0)
        revoke = gr.Button("Revoke this account's sessions", variant="stop", elem_id="sessions-revoke", scale=0)
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="sessions-table")
    status = gr.HTML(elem_id="sessions-status")
    return Layout(account, show, revoke, table, status)


def wire(v: Layout, store: AnnotationStore, settings: Any) -> None:
    def shown(handler, account, request) -> dict:
        try:
            s = handler(store, identify(request, settings), account)
        except ValueError as e:     # Refused included: the message says what to do
            return {v.status: status_html(str(e), "error")}
        return {v.table: s.frame, v.status: status_html(s.message, s.kind)}

    def sessions_show(account, request: gr.Request = None):
        return shown(show_sessions, account, request)

    def sessions_revoke(account, request: gr.Request = None):
        return shown(revoke_sessions, account, request)

    priv = {"api_visibility": "private"}
    v.show.click(sessions_show, v.account, [v.table, v.status], **priv)
    v.revoke.click(sessions_revoke, v.account, [v.table, v.status], **priv)


def build(store: AnnotationStore, settings: Any) -> None:
    wire(layout(), store, settings)
