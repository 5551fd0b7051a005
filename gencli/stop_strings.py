"""Stop strings in streamed text: what may be shown now, and the text without the stop that ended it.

gencli's CLI keeps a stop string in the output (documented); chat keeps it out of a reply, since it
is the next speaker's tag; OpenAI's API leaves it out of `text`. While text streams, an ending
that could be the start of a stop string is held back until the next piece shows whether it is.
Free of torch: the server's event loop and the terminal both use it.
"""

from __future__ import annotations


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [at for stop in stops if (at := text.find(stop)) >= 0]
    return min(found) if found else None


def without_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` cut before the stop string that ended it (its last token may reach past the stop),
    or as it is when it holds none."""
    cut = _first_stop(text, stops)
    return text if cut is None else text[:cut]


class StopHoldBack:
    """Feed streamed pieces; each call returns the text that is safe to show now. What is held back
    could still become a stop string; `rest(ended_by_stop)` returns it, or nothing of the stop."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.received = ""
        self.shown = 0

    def feed(self, piece: str) -> str:
        self.received += piece
        safe = _first_stop(self.received, self.stops)  # a piece may hold a whole stop and more
        if safe is None:  # hold back an ending that could begin a stop string
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
        it, what comes before the stop."""
        final = without_stop(self.received, self.stops) if ended_by_stop else self.received
        rest, self.shown = final[self.shown :], max(self.shown, len(final))
        return rest
