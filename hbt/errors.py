"""The one exception type for bad input.

Anything a user can get wrong (a file, a field, an option) raises :class:`InputError`
with a message that names it. The CLI prints the message on one line and exits with
status 2; no traceback, because the traceback would point at hbt, not at the input.
"""

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input: a malformed file, a missing field, an out-of-range option."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


def at_least(minimum: int, values: dict[str, int]) -> None:
    """Refuse the first of ``values`` (the setting or option that holds it: its value)
    below ``minimum``, naming it."""
    for where, value in values.items():
        if value < minimum:
            raise InputError(where, f"must be >= {minimum}, got {value}")
