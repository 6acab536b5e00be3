"""The one exception type for mistakes a user can fix: its message is shown as a single line, no traceback."""


class PetlabError(Exception):
    """A user-facing error whose message says what was wrong and what to do about it."""
