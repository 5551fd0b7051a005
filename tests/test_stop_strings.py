"""Stop strings in streamed text: nothing of a stop is ever shown, and nothing else is lost."""

import pytest

from gencli.stop_strings import StopHoldBack, without_stop


@pytest.mark.parametrize(
    ("pieces", "ended_by_stop", "shown"),
    [
        (["Hello", " wor", "ld"], False, "Hello world"),
        (["Hello\nUs", "er: hi"], True, "Hello"),  # the stop arrives split across pieces
        (["ver", "y:]"], True, "ver"),  # a piece holds the whole stop and more
        (["a\nUs"], False, "a\nUs"),  # held back, then shown: no stop came
    ],
)
def test_what_is_shown_is_the_text_up_to_the_stop(pieces, ended_by_stop, shown):
    stops = ("\nUser:", "y:")
    held = StopHoldBack(stops)
    streamed = "".join(held.feed(piece) for piece in pieces) + held.rest(ended_by_stop)
    assert streamed == shown
    assert streamed == (without_stop("".join(pieces), stops) if ended_by_stop else "".join(pieces))


@pytest.mark.parametrize(
    ("pieces", "shown"),
    [
        (["Hello\nUs", "er: hi"], "Hello\nUser:"),
        (["ver", "y:]"], "very:"),  # through the stop, not the rest of its token
        (["a, b", ", c"], "a,"),  # the earliest stop wins
    ],
)
def test_a_kept_stop_is_shown_and_nothing_after_it(pieces, shown):
    stops = ("\nUser:", "y:", ",")
    held = StopHoldBack(stops, keep=True)
    streamed = "".join(held.feed(piece) for piece in pieces) + held.rest(True)
    assert streamed == shown == without_stop("".join(pieces), stops, keep=True)


def test_without_stop_cuts_at_the_first_stop():
    assert without_stop("one, two, three", (",",)) == "one"
    assert without_stop("no stop here", (",",)) == "no stop here"
