"""Calling a running Gradio app's events the way a hostile client would: by function index over HTTP, including
events marked private (not in the API page), with whatever data and event data the caller likes.

    session = RawSession(url, headers={"Cookie": cookie})      # or RawSession.login(url, "bob", "pw") for auth=
    out = session.call("delete_it", [some_id, some_id])          # fn found by name in /config
    out["data"]                                                  # the outputs, as the page would get them
"""
from __future__ import annotations

import json
import uuid
from typing import Any

import httpx


class RawSession:
    """One browser-like session (one session_hash: Gradio keeps the page's State per session)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, client: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self.http = client or httpx.Client(base_url=self.url, headers=headers or {}, timeout=120, trust_env=False)
        self.session_hash = uuid.uuid4().hex[:12]
        self._config: dict[str, Any] | None = None

    @classmethod
    def login(cls, url: str, username: str, password: str) -> RawSession:
        """A session behind Gradio's `auth=` login (the form a browser posts)."""
        http = httpx.Client(base_url=url.rstrip("/"), timeout=120, trust_env=False)
        r = http.post("/login", data={"username": username, "password": password})
        if r.status_code != 200:
            raise RuntimeError(f"login as {username} failed: {r.status_code} {r.text[:200]}")
        return cls(url, client=http)

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            r = self.http.get("/config")
            r.raise_for_status()
            self._config = r.json()
        return self._config

    def fn_index(self, name: str) -> int:
        """The index of the event whose function (api_name) is `name`; the first one when several share it."""
        for dep in self.config["dependencies"]:
            if dep.get("api_name") == name:
                return dep["id"]
        raise KeyError(f"no event named {name!r} in /config")

    def visibility(self, name: str) -> str:
        return next(d.get("api_visibility") for d in self.config["dependencies"] if d.get("api_name") == name)

    def call(self, name: str | int, data: list[Any], event_data: Any = None) -> dict[str, Any]:
        """Joins the queue with `data` for event `name` (or its index) and waits for the result: the
        process_completed message's "output" ({"data": [...]}, or {"error": ...})."""
        index = name if isinstance(name, int) else self.fn_index(name)
        r = self.http.post("/gradio_api/queue/join", json={
            "data": data, "fn_index": index, "session_hash": self.session_hash, "event_data": event_data,
            "trigger_id": None})
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {r.text[:300]}", "status": r.status_code}
        with self.http.stream("GET", f"/gradio_api/queue/data?session_hash={self.session_hash}") as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message.get("output") or {}
        raise RuntimeError(f"the stream for {name} ended without a result")

    def text(self, name: str | int, data: list[Any], event_data: Any = None) -> str:
        """`call`, with every output flattened to one text (for asserting on the messages shown)."""
        return json.dumps(self.call(name, data, event_data), ensure_ascii=False)

    def close(self) -> None:
        self.http.close()
