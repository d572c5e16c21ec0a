"""Deployment settings from environment variables, read when the app is built (never at import)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_ROWS, LOCKED_BATCH_ROWS = 1000, 200   # rows per batch job: a locked deployment is public, its workers shared
UPLOAD_MAX_AGE_S = 3600                   # uploads older than this are deleted (checked as often)


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
    MT5_STUDIO_DEMO_DIR=data/demo  where demo checkpoints are built and cached
    MT5_STUDIO_DEMO=1              demo mode without the --demo flag
    MT5_STUDIO_MAX_FILE_MB=10      largest upload accepted, in MB (Gradio refuses bigger files before they are read)
    MT5_STUDIO_BATCH_ROWS=N        rows per batch job: default 1000, or 200 when locked (a public deployment)
    MT5_STUDIO_OFFLINE=1           read checkpoints from the local Hugging Face cache only (HF_HUB_OFFLINE=1 too);
                                   also set when the Hub cannot be reached at start-up
    """
    locked: bool = False
    allowed_models: list[str] = field(default_factory=list)
    cache_models: int = 3
    cache_bytes: int = 6000 * 2**20
    concurrency: int = 2
    demo_dir: Path = ROOT / "data" / "demo"
    demo: bool = False
    offline: bool = False
    max_file_bytes: int = 10 * 2**20
    batch_rows: int = 1000

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        allowed = [m.strip() for m in env.get("MT5_STUDIO_ALLOWED_MODELS", "").split(",") if m.strip()]
        truthy = ("1", "true", "yes")
        locked = env.get("MT5_STUDIO_LOCKED", "").lower() in truthy or bool(allowed)
        return cls(
            locked=locked,
            allowed_models=allowed,
            cache_models=max(1, _int(env, "MT5_STUDIO_CACHE_MODELS", 3)),
            cache_bytes=max(1, _int(env, "MT5_STUDIO_CACHE_MB", 6000)) * 2**20,
            concurrency=max(1, _int(env, "MT5_STUDIO_CONCURRENCY", 2)),
            demo_dir=Path(env.get("MT5_STUDIO_DEMO_DIR") or ROOT / "data" / "demo"),
            demo=env.get("MT5_STUDIO_DEMO", "").lower() in truthy,
            max_file_bytes=max(1, _int(env, "MT5_STUDIO_MAX_FILE_MB", 10)) * 2**20,
            batch_rows=max(1, _int(env, "MT5_STUDIO_BATCH_ROWS", LOCKED_BATCH_ROWS if locked else MAX_ROWS)),
            offline=any(env.get(name, "").lower() in truthy for name in ("MT5_STUDIO_OFFLINE", "HF_HUB_OFFLINE")),
        )
