"""The thread governor follows the machine's load with hysteresis, and a change of the thread count
leaves the tokens alone and the log-probabilities within float32 rounding."""

from collections.abc import Iterator

import pytest
import torch

from gencli import threads
from gencli.generation import generate_text
from gencli.loading import load_model
from gencli.settings import DecodingOptions
from gencli.threads import READINGS_TO_CHANGE, ThreadGovernor


@pytest.fixture
def thread_count() -> Iterator:
    original = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(original)


def governed(readings: list[int | None], most: int = 2, cores: int = 2) -> list[int]:
    """The thread count in force after each reading."""
    values = iter(readings)
    governor = ThreadGovernor(most, cores, readings=lambda: next(values))
    return [governor.step() for _ in readings]


def test_the_governor_gives_a_busy_core_back_and_takes_it_again(thread_count):
    # Idle, our two threads are the two runnable tasks; a neighbour makes three, and with one
    # thread of ours it is two.
    busy, idle_again = [3] * READINGS_TO_CHANGE, [1] * READINGS_TO_CHANGE
    counts = governed([2, 2, *busy, 2, 2, *idle_again, 2])
    assert counts == [2, 2, 2, 2, 1, 1, 1, 1, 1, 2, 2]
    assert torch.get_num_threads() == 2


def test_one_short_lived_neighbour_changes_nothing(thread_count):
    readings = [2, 3, 2, 3, 3, 2, 3, 3, None, 3, 2]  # never READINGS_TO_CHANGE in a row
    assert governed(readings) == [2] * len(readings)


@pytest.mark.parametrize(
    ("runnable", "expected"),
    [(4, 4), (5, 3), (7, 1), (20, 1)],
)
def test_the_governor_leaves_one_core_per_neighbour(thread_count, runnable, expected):
    assert governed([runnable] * READINGS_TO_CHANGE, most=4, cores=4)[-1] == expected


def test_the_governor_is_off_where_the_user_fixed_the_thread_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads._governor.cache_clear()
    try:
        assert threads._governor() is None
        policy = threads.thread_policy()
        assert "OMP_NUM_THREADS=2" in policy and "busy core" not in policy
    finally:
        threads._governor.cache_clear()


@pytest.mark.parametrize("mode", ["kv-cache", "scratch", "greedy"])
def test_tokens_and_logprobs_do_not_depend_on_the_thread_count(tiny_model_dir, thread_count, mode):
    thread_count(2)
    loaded = load_model(str(tiny_model_dir), device="cpu")  # its engines split products in two
    options = DecodingOptions(max_new_tokens=12, ignore_eos=True)
    runs = []
    for count in (2, 1):
        thread_count(count)
        runs.append(generate_text(loaded, "The cat sat", mode, options, top_logprobs=3))
    assert runs[0].token_ids == runs[1].token_ids
    for first, second in zip(runs[0].logprobs, runs[1].logprobs, strict=True):
        assert [top["token"] for top in first["top"]] == [top["token"] for top in second["top"]]
        assert first["logprob"] == pytest.approx(second["logprob"], abs=1e-5)
