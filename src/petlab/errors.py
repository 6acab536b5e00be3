"""The one exception type for mistakes a user can fix: its message is shown as a single line, no traceback."""


class PetlabError(Exception):
    """A user-facing error whose message says what was wrong and what to do about it."""


def shown(values: list) -> str:
    """A list for a one-line message: its first few items, and how many there are in all."""
    more = f", ... ({len(values)} in all)" if len(values) > 4 else ""
    return f"[{', '.join(map(str, values[:4]))}{more}]"


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (its type's name when it has none), to quote in one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def user_error(error: BaseException | None) -> PetlabError | None:
    """The PetlabError behind ``error`` (Hydra wraps errors raised while instantiating), if there is one."""
    while error is not None:
        if isinstance(error, PetlabError):
            return error
        error = error.__cause__ or error.__context__
    return None
