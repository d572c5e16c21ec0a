"""The exception the app shows to users (what was wrong and what to do), and the one rule for turning any
exception into the message the page or an API caller sees."""

BUG_HINT = "The app is still running: try other settings or another checkpoint."


class UserError(Exception):
    """A problem with the user's input, model choice or settings; its message is shown in the page as is."""


def describe(error: BaseException) -> str:
    """The message for `error`: a UserError's own text; anything else is a bug, named by its type and message
    (the caller logs its traceback), with the note that the app keeps serving."""
    if isinstance(error, UserError):
        return str(error)
    return f"Something went wrong ({type(error).__name__}: {error}). {BUG_HINT}"
