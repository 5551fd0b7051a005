"""Stop strings in streamed text: what may be shown now, and the text without the stop that ended it.

gencli's CLI keeps a stop string in the output (documented); chat keeps it out of a reply, since it
is the next speaker's tag; OpenAI's API leaves it out of `text`. While text streams, an ending
that could be the start of a stop string is held back until the next piece shows whether it is.
Free of torch: the server's event loop and the terminal both use it.
"""

from __future__ import annotations


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, int] | None:
    """Where the earliest stop string in `text` starts and ends, or None."""
    found = [(at, at + len(stop)) for stop in stops if (at := text.find(stop)) >= 0]
    return min(found) if found else None


def without_stop(text: str, stops: tuple[str, ...], keep: bool = False) -> str:
    """`text` cut before the stop string that ended it (its last token may reach past the stop),
    or with `keep` just after it; as it is when it holds none."""
    span = _first_stop(text, stops)
    return text if span is None else text[: span[keep]]


class StopHoldBack:
    """Feed streamed pieces; each call returns the text that is safe to show now. What is held back
    could still become a stop string; `rest(ended_by_stop)` returns it, or nothing of the stop
    (with `keep`, the stop itself but nothing after it, as vLLM's include_stop_str_in_output)."""

    def __init__(self, stops: tuple[str, ...], keep: bool = False):
        self.stops, self.keep = stops, keep
        self.received = ""
        self.shown = 0

    def feed(self, piece: str) -> str:
        self.received += piece
        span = _first_stop(self.received, self.stops)  # a piece may hold a whole stop and more
        if span is not None:
            safe = span[self.keep]
        else:  # hold back an ending that could begin a stop string
            ending = self.received.endswith
            held = max(
                (size for stop in self.stops for size in range(len(stop), 0, -1) if ending(stop[:size])),
                default=0,
            )
            safe = len(self.received) - held
        if safe <= self.shown:
            return ""
        shown, self.shown = self.received[self.shown : safe], safe
        return shown

    def rest(self, ended_by_stop: bool) -> str:
        """What is left to show once the text is complete: all of it, or when a stop string ended
        it, what comes before the stop (with `keep`, through it)."""
        final = without_stop(self.received, self.stops, self.keep) if ended_by_stop else self.received
        rest, self.shown = final[self.shown :], max(self.shown, len(final))
        return rest
