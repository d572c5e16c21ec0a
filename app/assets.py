"""Reads `assets/`: examples, the default-model registry, CSS, JavaScript and help text."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TASKS = ("summarization", "span_filling", "classification", "tagging", "question_answering", "generative_qa")


@dataclass(frozen=True)
class TaskModels:
    """The registry entry of one task: which head it loads, its default checkpoint and suggestions."""
    head: str
    default: str
    suggestions: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Assets:
    examples: dict[str, list[dict]]
    models: dict[str, TaskModels]
    demo_heads: dict[str, str]      # task -> name of its demo checkpoint (see model.tiny.build_demo_checkpoints)
    css: str
    js: dict[str, str]              # file stem -> source
    help: dict[str, str]            # file stem -> markdown

    def example_texts(self) -> list[str]:
        """Every text of every example (the demo tokenizer is trained on these)."""
        out = []
        for rows in self.examples.values():
            for row in rows:
                out += [v for k, v in row.items() if k != "lang" and isinstance(v, str)]
        return out

    def with_demo_models(self, checkpoints: dict[str, Path]) -> "Assets":
        """A copy whose defaults are the demo checkpoints (the real ids stay as suggestions)."""
        models = {}
        for task, entry in self.models.items():
            path = str(checkpoints[self.demo_heads[task]])
            models[task] = replace(entry, default=path, suggestions=[path, *entry.suggestions])
        return replace(self, models=models)


def load_assets(folder: Path = ASSETS) -> Assets:
    examples = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    registry = json.loads((folder / "models.json").read_text(encoding="utf-8"))
    models = {task: TaskModels(**entry) for task, entry in registry["tasks"].items()}
    missing = [t for t in TASKS if t not in models]
    if missing:
        raise ValueError(f"{folder / 'models.json'} has no entry for {missing}")
    return Assets(
        examples=examples, models=models, demo_heads=registry["demo"],
        css=(folder / "style.css").read_text(encoding="utf-8"),
        js={p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.js"))},
        help={p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / "help").glob("*.md"))},
    )
