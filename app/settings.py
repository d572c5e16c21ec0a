"""Deployment settings from environment variables, read when the app is built (never at import)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .files import VisitorFiles

ROOT = Path(__file__).resolve().parent.parent
MAX_ROWS, LOCKED_BATCH_ROWS = 1000, 200   # rows per batch job: a locked deployment is public, its workers shared
UPLOAD_MAX_AGE_S = 3600                   # uploads older than this are deleted (checked as often)
SPACE_DATA_DIR = Path("/data")            # a Space's persistent storage, when it has some


def default_files_dir() -> Path:
    """Visitors' files beside the annotation database (app.annotation.store.default_data_dir): under `/data` on a
    Space with persistent storage, else under `data/`."""
    data = SPACE_DATA_DIR if SPACE_DATA_DIR.is_dir() and os.access(SPACE_DATA_DIR, os.W_OK) else ROOT / "data"
    return data / "visitor-files"


def _int(env: dict, name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


@dataclass
class Settings:
    """What a deployment may change without touching code.

    MT5_STUDIO_LOCKED=1            only the registry's checkpoints (and MT5_STUDIO_ALLOWED_MODELS) can be loaded
    MT5_STUDIO_ALLOWED_MODELS=a,b  extra Hub ids / folders allowed when locked (setting it also locks)
    MT5_STUDIO_CACHE_MODELS=3      loaded models kept at once
    MT5_STUDIO_CACHE_MB=6000       memory the kept models may take (weights), in MB
    MT5_STUDIO_CONCURRENCY=2       requests run at once (more wait in the queue)
    MT5_STUDIO_BATCH_VISITORS=8    summarization requests decoded together in one batch (app/batching.py; 1: alone)
    MT5_STUDIO_DEMO_DIR=data/demo  where demo checkpoints are built and cached
    MT5_STUDIO_DEMO=1              demo mode without the --demo flag
    MT5_STUDIO_MAX_FILE_MB=10      largest upload accepted, in MB (Gradio refuses bigger files before they are read)
    MT5_STUDIO_BATCH_ROWS=N        rows per batch job: default 1000, or 200 when locked (a public deployment)
    MT5_STUDIO_REQUEST_MB=1024     working memory one request may take (estimated from its token counts before the
                                   model runs; app.limits): more is refused. At least half the loaded model's weights
    MT5_STUDIO_OFFLINE=1           read checkpoints from the local Hugging Face cache only (HF_HUB_OFFLINE=1 too);
                                   also set when the Hub cannot be reached at start-up
    MT5_STUDIO_FILES_DIR=path      the one folder where the app writes files for visitors (exports of annotations
                                   and comparisons); default: data/visitor-files, /data/visitor-files on a Space
                                   with persistent storage (app.files)
    MT5_STUDIO_FILES_AGE_S=3600    a visitor's file is removed this many seconds after it was written
    MT5_STUDIO_FILES_MB=500        what the folder may hold in all, in MB: an export that would pass it is refused
                                   with a message naming the limit (nothing is kept)
    MT5_STUDIO_MCP=0               no MCP server (default on: the API endpoints are tools for AI agents at
                                   /gradio_api/mcp/, streamable HTTP)
    MT5_STUDIO_METRICX=id          a MetricX checkpoint (google/metricx-24-hybrid-large-v2p6): compare jobs score
                                   both systems with it when they run (off by default: ~0.5 s per segment on 2
                                   CPU cores in int8); MT5_STUDIO_METRICX_TOKENIZER (google/mt5-xl) and
                                   MT5_STUDIO_METRICX_QUANTIZATION (int8; none, int8-all, int4, int4-all) with it

    Sign-in and rights (app.annotation.rights):
    MT5_STUDIO_USERS=alice:pw,bob:pw   users who log in with a password (Gradio's login page guards the whole app)
    MT5_STUDIO_USERS_FILE=path         the same, one `name:password` per line (# comments); both may be given
    MT5_STUDIO_ADMINS=alice,bob        accounts that may import, export everyone's work, restore deleted
                                       annotations, change anyone's and manage batch jobs
    On a Space with `hf_oauth: true` in its README metadata (Hugging Face sets OAUTH_CLIENT_ID), visitors sign in
    with their Hugging Face account instead, and admins are Hugging Face user names.
    A deployment is *protected* when it is locked or has a sign-in method: saving then needs a signed-in user.
    """
    locked: bool = False
    allowed_models: list[str] = field(default_factory=list)
    cache_models: int = 3
    cache_bytes: int = 6000 * 2**20
    concurrency: int = 2
    batch_visitors: int = 8
    demo_dir: Path = ROOT / "data" / "demo"
    demo: bool = False
    offline: bool = False
    max_file_bytes: int = 10 * 2**20
    batch_rows: int = 1000
    request_mb: int = 1024
    sign_in: str = ""                       # "huggingface", "password" or "" (nobody signs in)
    users: dict[str, str] = field(default_factory=dict, repr=False)   # name -> password ("password" sign-in)
    admins: frozenset[str] = frozenset()
    files_dir: Path = field(default_factory=default_files_dir)
    files_max_age_s: int = 3600
    files_max_bytes: int = 500 * 2**20
    mcp: bool = True                        # the API endpoints as tools for AI agents (Gradio's MCP server)
    metricx: str = ""                       # a MetricX checkpoint: compare jobs score both systems with it
    metricx_tokenizer: str = "google/mt5-xl"
    metricx_quantization: str = "int8"

    @property
    def protected(self) -> bool:
        """Rights apply: saving needs a signed-in user, changing others' work needs an admin."""
        return self.locked or bool(self.sign_in)

    @cached_property
    def files(self) -> VisitorFiles:
        """The folder for visitors' files (app.files), made once per Settings: the one the app's exports share."""
        return VisitorFiles(self.files_dir, self.files_max_age_s, self.files_max_bytes)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        allowed = [m.strip() for m in env.get("MT5_STUDIO_ALLOWED_MODELS", "").split(",") if m.strip()]
        truthy = ("1", "true", "yes")
        locked = env.get("MT5_STUDIO_LOCKED", "").lower() in truthy or bool(allowed)
        users = _users(env)
        on_space_with_oauth = bool(env.get("SPACE_ID")) and bool(env.get("OAUTH_CLIENT_ID"))
        sign_in = "huggingface" if on_space_with_oauth else "password" if users else ""
        return cls(
            sign_in=sign_in,
            users=users if sign_in == "password" else {},
            admins=frozenset(a.strip() for a in env.get("MT5_STUDIO_ADMINS", "").split(",") if a.strip()),
            locked=locked,
            allowed_models=allowed,
            cache_models=max(1, _int(env, "MT5_STUDIO_CACHE_MODELS", 3)),
            cache_bytes=max(1, _int(env, "MT5_STUDIO_CACHE_MB", 6000)) * 2**20,
            concurrency=max(1, _int(env, "MT5_STUDIO_CONCURRENCY", 2)),
            batch_visitors=max(1, _int(env, "MT5_STUDIO_BATCH_VISITORS", 8)),
            demo_dir=Path(env.get("MT5_STUDIO_DEMO_DIR") or ROOT / "data" / "demo"),
            demo=env.get("MT5_STUDIO_DEMO", "").lower() in truthy,
            max_file_bytes=max(1, _int(env, "MT5_STUDIO_MAX_FILE_MB", 10)) * 2**20,
            batch_rows=max(1, _int(env, "MT5_STUDIO_BATCH_ROWS", LOCKED_BATCH_ROWS if locked else MAX_ROWS)),
            request_mb=max(1, _int(env, "MT5_STUDIO_REQUEST_MB", 1024)),
            files_dir=Path(env.get("MT5_STUDIO_FILES_DIR") or default_files_dir()).expanduser().resolve(),
            files_max_age_s=max(1, _int(env, "MT5_STUDIO_FILES_AGE_S", 3600)),
            files_max_bytes=max(1, _int(env, "MT5_STUDIO_FILES_MB", 500)) * 2**20,
            offline=any(env.get(name, "").lower() in truthy for name in ("MT5_STUDIO_OFFLINE", "HF_HUB_OFFLINE")),
            mcp=env.get("MT5_STUDIO_MCP", "1").lower() in truthy,
            metricx=env.get("MT5_STUDIO_METRICX", "").strip(),
            metricx_tokenizer=env.get("MT5_STUDIO_METRICX_TOKENIZER", "").strip() or "google/mt5-xl",
            metricx_quantization=env.get("MT5_STUDIO_METRICX_QUANTIZATION", "").strip() or "int8",
        )


def _users(env: dict) -> dict[str, str]:
    """name -> password from MT5_STUDIO_USERS ("a:pw,b:pw") and MT5_STUDIO_USERS_FILE (one per line)."""
    entries = [(f"MT5_STUDIO_USERS entry {i}", e) for i, e in
               enumerate(env.get("MT5_STUDIO_USERS", "").split(","), start=1) if e.strip()]
    path = env.get("MT5_STUDIO_USERS_FILE", "").strip()
    if path:
        try:
            lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"MT5_STUDIO_USERS_FILE={path!r} cannot be read: {e.strerror}") from None
        entries += [(f"{path} line {i}", line) for i, line in enumerate(lines, start=1)
                    if line.strip() and not line.lstrip().startswith("#")]
    users: dict[str, str] = {}
    for where, entry in entries:
        name, sep, password = entry.partition(":")   # the password exactly as written, spaces included
        if not sep or not name.strip() or not password:
            raise ValueError(f"{where}: write users as name:password")
        users[name.strip()] = password
    return users
