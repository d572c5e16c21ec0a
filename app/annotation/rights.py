"""Who is asking, and what they may do with annotations.

Two kinds of deployment:

* **Open** (not locked, no sign-in configured: someone's own machine): everybody may do everything, the annotator
  is the name typed in the page, and nothing is owned (`owner` is "").
* **Protected** (`MT5_STUDIO_LOCKED=1`, or a sign-in method configured): the annotator is the signed-in account,
  never a typed name. Saving needs a signed-in user; changing or deleting an annotation is for its owner (the
  account that saved it) and the deployment's admins (`MT5_STUDIO_ADMINS`); importing, exporting everyone's
  annotations, restoring deleted ones and managing batch jobs are for admins. A signed-in annotator sees and
  exports their own annotations only.

Sign-in methods (see app.settings): "huggingface" on a Space with `hf_oauth: true` (Gradio's OAuth, the account
is the Hugging Face user name), "password" when the owner lists users (Gradio's `auth=`, the account is the user
name typed at the login page).

Every check runs on the server inside the handler that does the work, for the page's events and the API alike:
an event hidden from the API page can still be called over HTTP, so hiding it protects nothing. `identify` reads
the account from the request itself (Gradio's login session or OAuth session cookie), never from anything the
client sends as an input. A session signed out ("Log out") or revoked by an admin reaches no handler with its
credentials: app.annotation.sessions.SessionGuard takes them out of every request first, so `identify` (and
Gradio's own login check) sees nobody signed in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..settings import Settings


class Refused(ValueError):
    """An action this identity may not do; the message says why and what to do, fit to show as-is."""


@dataclass(frozen=True)
class Identity:
    user: str = ""              # the signed-in account; "" when nobody is signed in
    admin: bool = False
    protected: bool = False     # rights apply (see the module's docstring)
    method: str = ""            # "huggingface", "password" or "" (no sign-in configured)

    @property
    def signed_in(self) -> bool:
        return bool(self.user)

    @property
    def owner(self) -> str:
        """What an annotation saved by this identity records as its owner."""
        return self.user if self.protected else ""

    def annotator(self, typed: Any) -> str:
        """The annotator name to store: the account when rights apply, else the name typed in the page."""
        if self.protected:
            return self.user
        return "" if typed is None else str(typed).strip()

    @property
    def sees_all(self) -> bool:
        return not self.protected or self.admin

    def label(self) -> str:
        """One line for the page: who is signed in, or how to sign in."""
        if not self.protected:
            return ""
        if self.signed_in:
            return f"Signed in as **{self.user}**" + (" (admin)" if self.admin else "") + "."
        return sign_in_hint(self.method)


OPEN = Identity()   # open use: no rights apply (scripts, tests, a deployment nobody signs in to and not locked)


def sign_in_hint(method: str) -> str:
    if method == "huggingface":
        return "Not signed in: press **Sign in with Hugging Face** at the top of the page to save annotations."
    if method == "password":
        return "Not signed in: open the page again and log in with your user name and password."
    return ("This deployment is locked and has no sign-in: its owner must configure MT5_STUDIO_USERS (or "
            "hf_oauth on a Space) before annotations can be saved.")


def identify(request: Any, settings: Settings) -> Identity:
    """The identity behind a Gradio request (`gr.Request`, or None outside a request: no one signed in)."""
    user = ""
    if settings.sign_in == "password":
        user = str(getattr(request, "username", None) or "") if request is not None else ""
    elif settings.sign_in == "huggingface":
        user = _oauth_user(request)
    return Identity(user=user, admin=bool(user) and user in settings.admins, protected=settings.protected,
                    method=settings.sign_in)


def _oauth_user(request: Any) -> str:
    """The Hugging Face user name in Gradio's OAuth session (set by /login/callback), "" when signed out or
    expired. Read as Gradio itself reads it for `gr.OAuthProfile` parameters."""
    if request is None:
        return ""
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    session = scope.get("session", {}) if isinstance(scope, dict) else (getattr(underlying, "session", None) or {})
    info = session.get("oauth_info") if hasattr(session, "get") else None
    if not isinstance(info, dict):
        return ""
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires < time.time():
        return ""
    userinfo = info.get("userinfo") or {}
    return str(userinfo.get("preferred_username") or "")


def require_save(ident: Identity) -> None:
    if ident.protected and not ident.signed_in:
        raise Refused(sign_in_hint(ident.method))


def require_owner_or_admin(ident: Identity, owner: str, what: str) -> None:
    """`what`: the action, e.g. "change" or "delete"."""
    if not ident.protected or ident.admin:
        return
    require_save(ident)
    if owner != ident.user:
        raise Refused(f"Only the annotator who saved it or an admin can {what} this annotation.")


def require_admin(ident: Identity, what: str) -> None:
    """`what`: the action as a noun phrase, e.g. "Importing annotations"."""
    if not ident.protected or ident.admin:
        return
    require_save(ident)
    raise Refused(f"{what} is for admins of this deployment (MT5_STUDIO_ADMINS); you are signed in as "
                  f"{ident.user}.")


def visible_owner(ident: Identity) -> str | None:
    """The `owner` filter for what this identity may see: None (everything) for admins and open use, the
    account for a signed-in annotator. Refused for nobody signed in on a protected deployment."""
    if ident.sees_all:
        return None
    require_save(ident)
    return ident.user
