"""What every tab is handed: settings, assets, the shared model cache, and the panels to mount under results."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from model.config import CONFIG_NAME, read_json
from model.hub import resolve_file

from . import __version__
from .assets import Assets
from .batching import Batcher
from .attention import AttentionInput, capture
from .models import Loaded, ModelCache, ModelPolicy, ModelRequest, Progress
from .scoring import MetricXService
from .settings import Settings
from .tasklist import check_registry, task as task_named


@dataclass
class RunRecord:
    """One result with its provenance: what an annotation panel saves and what the attention panel reruns."""
    task: str
    model: dict[str, Any]          # Loaded.provenance(): source, head, dtype, device, quantization, family, ...
    settings: dict[str, Any]
    input: dict[str, Any]          # {"text": ...} or {"question": ..., "context": ...}
    output: Any                    # the task's result as plain data
    output_text: str               # the result as one text (for correcting it)
    attention: dict[str, Any]      # AttentionInput fields
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    app_version: str = __version__


class AttentionCache:
    """The last few results' attention maps, so moving a slider does not rerun the model."""

    def __init__(self, size: int = 4):
        self.size, self._maps, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, loaded: Loaded, what: AttentionInput):
        key = (loaded.request, what.source, what.question, what.target)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
        maps = capture(loaded, what)
        with self._lock:
            self._maps[key] = maps
            while len(self._maps) > self.size:
                self._maps.popitem(last=False)
        return maps


@dataclass
class AppContext:
    settings: Settings
    assets: Assets
    cache: ModelCache
    demo: bool = False
    attention: AttentionCache = field(default_factory=AttentionCache)
    # Called inside each tab's empty slot under its result, with the tab's handle (the annotation panel).
    panels: list[Callable[[Any], None]] = field(default_factory=list)
    metricx: MetricXService | None = None   # the deployment's MetricX (Settings.metricx), None when not set

    @classmethod
    def create(cls, settings: Settings, assets: Assets, demo: bool = False) -> "AppContext":
        """The context for `settings` and `assets`; a registry that misses a task or gives it the wrong head is
        refused here (ValueError saying which)."""
        check_registry(assets)
        allowed = {e.default for e in assets.models.values()}
        allowed |= {s for e in assets.models.values() for s in e.suggestions}
        policy = ModelPolicy(settings.locked, frozenset(allowed | set(settings.allowed_models)))
        cache = ModelCache(settings.cache_models, settings.cache_bytes, policy, offline=settings.offline,
                           folders=assets.folders, request_mb=settings.request_mb,
                           batcher=Batcher(max_batch=settings.batch_visitors))
        metricx = MetricXService(settings.metricx, settings.metricx_tokenizer, settings.metricx_quantization,
                                 settings.offline) if settings.metricx else None
        return cls(settings, assets, cache, demo, metricx=metricx)

    def request(self, task: str, source: str | None, dtype: str = "auto", device: str = "auto",
                quantization: str = "none") -> ModelRequest:
        """The request for `task`'s head; an empty source means the task's default checkpoint."""
        entry = self.assets.models[task]
        source = (source or "").strip() or entry.default
        return ModelRequest(source, self.head_for(task, source), dtype or "auto", device or "auto",
                            quantization or "none")

    def head_for(self, task: str, source: str) -> str:
        """The head `task` loads `source` with: the table's, unless the task accepts others (Task.heads) and the
        checkpoint's config.json names one in `architectures` (read as the cache would: policy first, short
        names resolved, offline kept). A config that cannot be read leaves the table's head: the load reports
        what is wrong."""
        spec = task_named(task)
        if not spec.heads:
            return spec.head
        self.cache.policy.check(source)   # a locked deployment reads no other repo
        try:
            where = str(self.cache.folders.get(source, source))
            data = read_json(resolve_file(where, CONFIG_NAME, local_files_only=self.cache.offline,
                                          token=self.cache.policy.token(source)))   # anonymous unless listed
        except Exception:  # noqa: BLE001 - reported by the load itself
            return spec.head
        for arch in data.get("architectures") or []:
            for suffix, head in spec.heads.items():
                if str(arch).endswith(suffix):
                    return head
        return spec.head

    def load(self, task: str, source: str | None, dtype: str = "auto", device: str = "auto",
             quantization: str = "none", progress: Progress | None = None) -> Loaded:
        return self.cache.get(self.request(task, source, dtype, device, quantization), progress)
