"""Test harness: a Hugging Face Hub stand-in on localhost that answers 404 to everything and records, per request,
the path and the Authorization header it came with (point HF_ENDPOINT at `url`)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeHub:
    server: ThreadingHTTPServer
    requests: list[tuple[str, str | None]] = field(default_factory=list)   # (path, Authorization or None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def seen(self, repo: str) -> list[str | None]:
        """The Authorization headers of the requests that named `repo`."""
        return [auth for path, auth in list(self.requests) if repo in path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start() -> FakeHub:
    hub: FakeHub

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            hub.requests.append((self.path, self.headers.get("Authorization")))
            body = b'{"error": "Repository not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = _answer

        def log_message(self, *args):   # quiet
            pass

    hub = FakeHub(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=hub.server.serve_forever, daemon=True).start()
    return hub
