"""One module per tab; each has `build(ctx) -> TabHandle` that lays out its components and wires its events.

A task tab names its task as `TASK`; `task_tabs()` finds them here, in the task table's order, so adding a task
is its row in `app/tasklist.py`, its tab module here, its help file and its `assets/models.json` entry.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..tasklist import TASKS


def task_tabs() -> list[ModuleType]:
    """The task tab modules of this package, in the order of `TASKS` (tabs for tasks not in the table are an
    error: a tab without its row would serve a task nothing else knows)."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    tabs = {module.TASK: module for module in modules if hasattr(module, "TASK")}
    unknown = set(tabs) - set(TASKS)
    if unknown:
        raise RuntimeError(f"tab modules for tasks missing from app/tasklist.py: {sorted(unknown)}")
    return [tabs[name] for name in TASKS if name in tabs]
