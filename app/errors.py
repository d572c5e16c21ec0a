"""The exception the app shows to users (what was wrong and what to do), and the one rule for turning any
exception into the message the page or an API caller sees; and the one reader of JSON from a visitor or a file."""
from __future__ import annotations

import json

BUG_HINT = "The app is still running: try other settings or another checkpoint."


class UserError(Exception):
    """A problem with the user's input, model choice or settings; its message is shown in the page as is."""


def describe(error: BaseException) -> str:
    """The message for `error`: a UserError's own text; anything else is a bug, named by its type and message
    (the caller logs its traceback), with the note that the app keeps serving."""
    if isinstance(error, UserError):
        return str(error)
    return f"Something went wrong ({type(error).__name__}: {error}). {BUG_HINT}"


def read_json_line(text: str | bytes, where: str) -> object:
    """The JSON value in `text` (one line of a file, or a value a visitor sent). ValueError, one line starting
    with `where` ("rows.jsonl line 3"), for malformed JSON and for JSON nested too deeply to read: Python's
    parser recurses once per level, so `[[[[…` 60,000 deep raises RecursionError, not JSONDecodeError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: not valid JSON (nested too deeply to read)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
