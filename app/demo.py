"""Offline demo mode: tiny random-weight checkpoints built locally, so every tab works without the Hub."""
from __future__ import annotations

import socket
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from model.tiny import build_demo_checkpoints

from .assets import Assets
from .translation import languages


def build_demo(assets: Assets, folder: Path) -> dict[str, Path]:
    """Builds (or reuses, when built from the same examples) the demo checkpoints under `folder`."""
    return build_demo_checkpoints(folder, assets.example_texts(), languages=[lang.code for lang in languages()])


def hub_unavailable(assets: Assets, offline: bool = False, timeout: float = 2.0) -> bool:
    """True when the default checkpoints can be neither read from the local cache nor downloaded: `offline`
    (Settings.offline) with the summarization default not cached, or the Hub's host unreachable."""
    default = assets.models["summarization"].default
    if Path(default).is_dir() or isinstance(try_to_load_from_cache(default, "config.json"), str):
        return False
    if offline:
        return True
    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        return True
