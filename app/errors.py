"""The one exception the app shows to users: what was wrong and what to do."""


class UserError(Exception):
    """A problem with the user's input, model choice or settings; its message is shown in the page as is."""
