"""Finding checkpoint files: a local directory, or a Hub repo through huggingface_hub (its cache, HF_HUB_OFFLINE,
tokens). Every failure becomes one exception that says what was looked for and what to do."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

HUB_OPTIONS = ("revision", "subfolder", "token", "cache_dir", "local_files_only", "force_download")


class CheckpointError(ValueError):
    """A checkpoint whose files or weights do not fit the model, or that names files it may not."""


class CheckpointNotFoundError(FileNotFoundError):
    """A local directory or Hub repo lacks what was asked for, or cannot be reached."""


def hub_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pops the huggingface_hub arguments out of `options`."""
    return {k: options.pop(k) for k in HUB_OPTIONS if k in options}


def resolve_file(repo_or_dir: str | os.PathLike, filename: str, optional: bool = False,
                 **hub: Any) -> Path | None:
    """Local path of `filename` in a directory or Hub repo; None if `optional` and the file does not exist.

    Names come from index files and callers, so they are checked first: a file name, revision or subfolder that
    would leave the checkpoint's folder (absolute, `..`) is refused with a CheckpointError."""
    check_name(filename, "file name", repo_or_dir)
    for option in ("revision", "subfolder"):
        if hub.get(option):
            check_name(str(hub[option]), option, repo_or_dir)
    local = Path(repo_or_dir)
    if local.is_dir():
        if hub.get("subfolder"):  # as on the Hub: the checkpoint sits in that folder of the directory
            local = local / str(hub["subfolder"])
        path = local / filename
        if path.is_file():
            return path
        if optional:
            return None
        raise CheckpointNotFoundError(f"{local} has no {filename}: is it a saved mT5/UMT5 checkpoint directory?")
    repo = str(repo_or_dir)
    if looks_like_path(repo):
        raise CheckpointNotFoundError(f"{repo} is not a directory here, nor a Hub repo id (owner/name)")
    try:
        return Path(hf_hub_download(repo, filename, **hub))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise CheckpointNotFoundError(f"Hub repo {repo!r} does not exist or is private/gated: check the id, or "
                                      "pass token= (or run `hf auth login`) if you have access") from e
    except RevisionNotFoundError as e:
        raise CheckpointNotFoundError(f"Hub repo {repo!r} has no revision {hub.get('revision')!r}") from e
    except LocalEntryNotFoundError as e:
        if optional:  # offline and not cached: an optional file counts as absent (required ones raise below)
            return None
        raise CheckpointNotFoundError(
            f"{filename} of {repo!r} is not in the local Hugging Face cache and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if is_offline(hub) else ''}: download it once with network access, "
            "or pass a local directory") from e
    except EntryNotFoundError as e:
        if optional:
            return None
        raise CheckpointNotFoundError(f"Hub repo {repo!r} has no file {filename}") from e
    except HFValidationError as e:
        raise CheckpointNotFoundError(f"{repo!r} is neither a local directory nor a valid Hub repo id: {e}") from e


def check_name(name: str, what: str, source: str | os.PathLike) -> None:
    """Refuses a name that would leave the checkpoint's folder or cache: absolute, `..`, `~`, a drive, or `\\`."""
    parts = PurePosixPath(name).parts
    if (not name or name.startswith(("/", "~")) or "\\" in name or ":" in (parts[0] if parts else "")
            or ".." in parts or "\0" in name):
        raise CheckpointError(f"{source}: the {what} {name!r} points outside the checkpoint's folder (absolute or "
                              "with '..'), so it was refused: a checkpoint may only name files inside itself")


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def is_offline(hub: dict[str, Any]) -> bool:
    return bool(hub.get("local_files_only")) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
