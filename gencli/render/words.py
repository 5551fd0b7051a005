"""Wording shared by the views and the command line; imports nothing, so `gencli --help` stays fast."""


def plural(count: int, noun: str) -> str:
    """'1 token', '2 tokens': a count and its noun, in the number the count asks for."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
