"""Test and bench harness (not part of the served app): starts `python app.py` in a child process and waits until
it serves."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(log: Path, demo: bool = True, env: dict | None = None, timeout: float = 120.0) -> Server:
    """Runs `python app.py [--demo]` on a free port (offline: HF_HUB_OFFLINE=1) and waits for its page."""
    port = free_port()
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port)] + (["--demo"] if demo else [])
    out = open(log, "w", encoding="utf-8")
    process = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}: see {log}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as response:
                if response.status == 200:
                    return Server(process, url, log)
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"the app did not serve within {timeout:.0f} s: see {log}")
