"""The annotator's name, one for the whole page and remembered in the browser.

Every annotator box of the page (the panel under each task tab's result, the Batch queue) shows the same name:
typing in one fills the others at once, and a reload fills them all from the browser's localStorage.

One `gr.BrowserState` holds it. Several BrowserStates with the same storage key do not work: each encrypts
with its own random secret, so every one but the last writer fails to decrypt the shared entry ("Error
reading from localStorage" in the console) and comes back empty.
"""
from __future__ import annotations

import gradio as gr

from ...settings import Settings
from ..rights import identify

STORAGE_KEY = "mt5studio-annotator"   # localStorage key: one name for every tab of this browser
# A fixed key, so the name survives a restart of the server too (a random one is drawn at each start). The
# name is no secret: Gradio's encryption only keeps other pages' scripts from reading it casually.
STORAGE_CIPHER_KEY = "mt5studio-annotator-name"


class AnnotatorName:
    """Collects the page's annotator boxes (`remember`), then `link()` (once, inside the Blocks, after every
    tab is built) adds the one BrowserState and wires them: typing in a box copies the text to the others and
    into localStorage in the browser itself (no round trip that could undo keystrokes); the page's load event
    fills every box from it."""

    def __init__(self) -> None:
        self.boxes: list[gr.Textbox] = []
        self.saved: gr.BrowserState | None = None

    def remember(self, box: gr.Textbox) -> gr.Textbox:
        self.boxes.append(box)
        return box

    def link(self, blocks: gr.Blocks, settings: Settings | None = None) -> gr.BrowserState | None:
        """Adds the BrowserState to `blocks` (call inside `with blocks:`) and wires every box remembered; none
        when there is no box (a page without annotation). On a protected deployment (`settings`) the boxes show
        the signed-in account instead and cannot be edited: the server stores that account whatever is typed."""
        if not self.boxes:
            return None
        settings = settings or Settings()
        if settings.protected:
            n = len(self.boxes)

            def signed_in(request: gr.Request = None):
                user = identify(request, settings).user
                box = gr.Textbox(value=user, interactive=False, placeholder="sign in to annotate")
                return [box] * n if n > 1 else box

            blocks.load(signed_in, None, self.boxes, api_visibility="private", queue=False)
            return None
        self.saved = gr.BrowserState("", storage_key=STORAGE_KEY, secret=STORAGE_CIPHER_KEY)
        n = len(self.boxes)
        for box in self.boxes:
            others = [b for b in self.boxes if b is not box]
            # the stored name is trimmed; the boxes get the text as typed (a trailing space is the next word)
            copy = f"(v) => [(v || '').trim(), ...Array({n - 1}).fill(v)]" if others else "(v) => (v || '').trim()"
            box.input(None, box, [self.saved, *others], js=copy, api_visibility="private", queue=False)
        fill = (lambda name: [name or ""] * n) if n > 1 else (lambda name: name or "")
        blocks.load(fill, self.saved, self.boxes, api_visibility="private", queue=False)
        return self.saved
