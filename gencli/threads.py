"""How gencli's OpenMP threads wait between parallel regions, and how many of them work.

A decode step makes ~50 product calls, each a parallel region; between two of them the worker
threads wait. libgomp (the OpenMP runtime of PyTorch's Linux wheels) lets them spin, sleep, or spin
a bounded number of iterations and then sleep (`GOMP_SPINCOUNT`). Measured on a 2-core Xeon, GPT-2
124M kv-cache, float32, 2 threads, tokens/s (idle / beside one process spinning on a core):

    OMP_WAIT_POLICY=PASSIVE (sleep)      33 / 27
    GOMP_SPINCOUNT=1000                  37 / 25
    GOMP_SPINCOUNT=100000                42 / 3.5
    GOMP_SPINCOUNT=1000000               44 / 12
    OMP_WAIT_POLICY=ACTIVE (spin)        44-46 / 17
    one thread                           28 / 26-30

Waking a sleeping thread costs ~150 us here, so sleeping costs a quarter of the idle speed; but
a spinning thread that shares a core with another process burns the time its sibling needs, and
decoding collapses. So gencli spins (`SPIN_COUNT`) and works with one thread fewer for every other
process that wants a core: `adapt_threads()`, called between decode steps, counts the runnable
tasks on the machine (/proc/loadavg, ~12 us) and moves the thread count after a few consistent
readings. A change of the count leaves the products' bits alone (each splits its work as it did
when it was built, `gencli.gemv`); PyTorch's attention without a mask splits its keys by thread, so
its rounding may move in the last bit (~1e-8), as between any two runs at other thread counts.

A user's own `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` wins over `SPIN_COUNT`, and an `OMP_NUM_THREADS`
fixes the thread count. This module does not import torch at the top: `choose_wait_policy` runs
before OpenMP starts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, MutableMapping

SPIN_COUNT = "1000000"
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# A change of the thread count waits for this many consecutive readings that agree on it: one
# short-lived process (a shell command) should not cost a step at half speed.
READINGS_TO_CHANGE = 3
LOADAVG = "/proc/loadavg"


def choose_wait_policy(environ: MutableMapping[str, str]) -> None:
    """Spin `SPIN_COUNT` iterations before sleeping, unless the user chose how threads wait."""
    if not any(name in environ for name in WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def thread_policy() -> str:
    """The policy in force, for a report: 'GOMP_SPINCOUNT=1000000, one thread fewer per busy core'."""
    chosen = [
        f"{name}={os.environ[name]}" for name in (*WAIT_VARIABLES, "OMP_NUM_THREADS") if name in os.environ
    ]
    if _governor() is not None:
        chosen.append("one thread fewer per busy core")
    return ", ".join(chosen) or "the OpenMP runtime's defaults"


def runnable_tasks() -> int | None:
    """Tasks running or waiting for a core on the whole machine now (Linux); None elsewhere."""
    try:
        with open(LOADAVG) as loadavg:
            return int(loadavg.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


class ThreadGovernor:
    """Keeps torch's intra-op thread count at the cores other processes leave free, between one
    and the count it started with. `readings` gives the runnable-task count (None: unknown)."""

    def __init__(self, most: int, cores: int, readings: Callable[[], int | None] = runnable_tasks):
        self.most = most
        self.cores = cores
        self.readings = readings
        self.current = most
        self._wanted: int | None = None
        self._agreeing = 0

    def wanted(self) -> int | None:
        """The thread count the machine's load leaves room for now. Our own threads are counted as
        running: between two steps the workers still spin, so the runnable tasks beyond them are
        other processes."""
        runnable = self.readings()
        if runnable is None:
            return None
        others = max(0, runnable - self.current)
        return max(1, min(self.most, self.cores - others))

    def step(self) -> int:
        """Take a reading; change the thread count after `READINGS_TO_CHANGE` that agree. Returns the
        thread count in force."""
        wanted = self.wanted()
        if wanted is None or wanted == self.current:
            self._wanted, self._agreeing = None, 0
            return self.current
        self._agreeing = self._agreeing + 1 if wanted == self._wanted else 1
        self._wanted = wanted
        if self._agreeing >= READINGS_TO_CHANGE:
            import torch

            torch.set_num_threads(wanted)
            self.current, self._wanted, self._agreeing = wanted, None, 0
        return self.current


@functools.cache
def _governor() -> ThreadGovernor | None:
    if "OMP_NUM_THREADS" in os.environ or runnable_tasks() is None:
        return None
    import torch

    return ThreadGovernor(torch.get_num_threads(), len(os.sched_getaffinity(0)))


def adapt_threads() -> None:
    """Between decode steps: follow the machine's load (see the module's docstring). Does nothing
    where the user fixed the thread count (OMP_NUM_THREADS) or the load cannot be read."""
    governor = _governor()
    if governor is not None:
        governor.step()
