"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class GencliError(Exception):
    """A problem the user can fix: the message names the problem and the fix."""

    exit_code = 2


class NoSuchIndexError(GencliError):
    """A layer, head or position that the model or the prompt does not have."""

    def __init__(self, what: str, value: int, count: int, owner: str):
        self.what, self.value, self.count = what, value, count
        super().__init__(f"there is no {what} {value}: {owner} has {what}s 0 to {count - 1}")


def check_index(what: str, value: int, count: int, owner: str = "this model") -> int:
    """`value` as an index into `count` items; negative values count from the end, as in Python."""
    if not -count <= value < count:
        raise NoSuchIndexError(what, value, count, owner)
    return value % count
