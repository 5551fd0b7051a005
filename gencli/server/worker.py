"""The one thread that touches the model: a bounded queue of jobs, run one at a time, and the KV
caches of recent prompts (`PrefixPool`) that later prompts starting the same way reuse."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from gencli.errors import GencliError
from gencli.generation import encode_prompt, generate_text
from gencli.loading import LoadedModel
from gencli.prefix import CachedPrefix, common_prefix_length
from gencli.scoring import prompt_logprobs, score_prompt
from gencli.server.errors import ApiError
from gencli.server.jobs import Inspection, Job
from gencli.server.scheduler import batchable, run_batches


class PrefixPool:
    """The KV caches of recent prompts for one mode, at most `entries` of them (each sized for the
    whole context). A prompt takes the one sharing its longest prefix, or a fresh or least
    recently used one, and leaves its own tokens in it."""

    def __init__(self, new_cache: Callable[[], Any], entries: int):
        self.new_cache = new_cache
        self.entries = entries
        self.caches: list[CachedPrefix] = []  # least recently used first

    def take(self, prompt_ids: list[int]) -> CachedPrefix:
        shared = [common_prefix_length(cached.token_ids, prompt_ids) for cached in self.caches]
        best = max(range(len(shared)), key=lambda index: (shared[index], index), default=None)
        if best is not None and shared[best] > 0:
            chosen = self.caches.pop(best)
        elif len(self.caches) < self.entries:
            chosen = CachedPrefix(self.new_cache())
        else:
            chosen = self.caches.pop(0)
        self.caches.append(chosen)
        return chosen


def cache_entry_bytes(loaded: LoadedModel) -> int:
    """What one cache for the whole context takes: keys and values, every layer and position."""
    config = loaded.model.config
    return 2 * config.n_layer * config.n_embd * loaded.context_length * loaded.model.dtype.itemsize


class Worker:
    """The one thread that touches the model. Requests wait in a queue of at most `max_queue`;
    one whose client has gone away gives its place up at once."""

    def __init__(self, loaded: LoadedModel, max_queue: int, prefix_cache_bytes: int):
        self.loaded = loaded
        self.max_queue = max_queue
        self.waiting: deque[Job | Inspection | None] = deque()
        self.ready = threading.Condition()
        self.entries = max(1, prefix_cache_bytes // cache_entry_bytes(loaded))
        self.pools: dict[str, PrefixPool] = {}
        self.thread = threading.Thread(target=self._run, name="gencli-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.ready:
            self.waiting.append(None)
            self.ready.notify()

    def submit(self, jobs: list[Job] | list[Inspection]) -> None:
        """Queue a request's jobs (one per choice), all or none."""
        with self.ready:
            left = [queued for queued in self.waiting if queued is not None and queued.cancelled.is_set()]
            for gone in left:
                self.waiting.remove(gone)
                gone.finish(None, ApiError(499, "the client went away"))
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise ApiError(503, "the server is busy: its queue is full; retry shortly", code="queue_full")
            self.waiting.extend(jobs)
            self.ready.notify()

    def _next(self) -> Job | Inspection | None:
        with self.ready:
            while not self.waiting:
                self.ready.wait()
            return self.waiting.popleft()

    def _pool(self, mode: str) -> PrefixPool | None:
        engine = self.loaded.engine(mode)
        if not engine.uses_cache:
            return None
        if mode not in self.pools:
            context = self.loaded.context_length
            self.pools[mode] = PrefixPool(lambda: engine.new_cache(context), self.entries)
        return self.pools[mode]

    def _run(self) -> None:
        while (job := self._next()) is not None:
            if job.cancelled.is_set():
                job.finish(None, ApiError(499, "the client went away"))
            elif isinstance(job, Inspection):
                try:
                    result = job.work()
                except Exception as problem:  # a fault in one request must not take the server down
                    self._finish(job, None, problem)
                else:
                    self._finish(job, result, None)
            elif batchable(job):
                run_batches(self.loaded, job, self._next_to_join, self._prefix, self._finish)
            else:
                self._run_alone(job)

    def _next_to_join(self, mode: str) -> Job | None:
        """The next waiting job, if it can join a running batch of `mode`; jobs that cannot wait
        at the head of the queue until the batch is done (first come, first served)."""
        with self.ready:
            while self.waiting and self.waiting[0] is not None and self.waiting[0].cancelled.is_set():
                self.waiting.popleft().finish(None, ApiError(499, "the client went away"))
            head = self.waiting[0] if self.waiting else None
            if isinstance(head, Job) and batchable(head) and head.request.mode == mode:
                return self.waiting.popleft()
            return None

    def _prefix(self, mode: str, prompt_ids: list[int]) -> CachedPrefix | None:
        pool = self._pool(mode)
        return pool.take(prompt_ids) if pool is not None else None

    @staticmethod
    def _finish(job: Job | Inspection, result: Any, problem: Exception | None) -> None:
        if problem is None:
            job.finish(result)
        elif isinstance(problem, GencliError):
            job.finish(None, ApiError(400, str(problem)))
        else:
            job.finish(None, ApiError(500, f"generation failed: {type(problem).__name__}: {problem}"))

    def _run_alone(self, job: Job) -> None:
        """A job no batch can take: scoring, cache snapshots, or a mode without cached steps."""
        prefix = None
        try:
            request = job.request
            if request.generates:
                prompt_ids = encode_prompt(self.loaded, request.prompt, request.options.max_new_tokens)
                prefix = self._prefix(request.mode, prompt_ids)
                result = generate_text(
                    self.loaded,
                    request.prompt,
                    request.mode,
                    request.options,
                    on_text=job.send,
                    inspect_cache=request.inspect_cache,
                    prefix=prefix,
                    cancelled=job.cancelled.is_set,
                    top_logprobs=request.top_logprobs,
                    on_logprob=lambda record: job.send_step("logprob", record),
                    on_snapshot=lambda snapshot: job.send_step("cache", snapshot.to_dict()),
                    on_pass=lambda record: job.send_step("speculation", record),
                )
            else:
                result = score_prompt(self.loaded, request.prompt, request.mode, request.top_logprobs)
            if request.echo and request.top_logprobs is not None and result.prompt_logprobs is None:
                result.prompt_logprobs = prompt_logprobs(
                    self.loaded, result.prompt_token_ids, request.top_logprobs
                )
        except Exception as problem:  # a fault in one request must not take the server down
            if prefix is not None:
                prefix.resync()
            self._finish(job, None, problem)
        else:
            self._finish(job, result, None)
