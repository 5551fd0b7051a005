"""`gencli batch --ray`: the same job on Ray Data, for when one machine is not enough.

The machine that reads the input plans it (bad lines, duplicate ids, `--resume`: `batch.plan`);
the lines to decode become a Ray dataset, and `map_batches` hands them to a pool of actors
(`BatchWorker`), each of which loads the model once and decodes with gencli's own batch decoding
(`batch.decode_items`, so every mode's engine). Records come back as JSON text, one per line, and
are written in input order. Ray restarts an actor that dies and retries its batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gencli.batch import BatchItem, BatchJob, decode_items, plan
from gencli.errors import GencliError
from gencli.settings import DecodingOptions

INSTALL_HINT = "--ray needs Ray Data, an optional extra: pip install 'gencli[ray]'"


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Core alone lacks it
    except ImportError:
        raise GencliError(INSTALL_HINT) from None
    return ray


class BatchWorker:
    """A Ray actor: loads the model once, then decodes the batches Ray Data hands it."""

    def __init__(self, folder: str, name: str, device: str, dtype: str, job: BatchJob):
        import torch

        from gencli.loading import load_model

        # One thread per CPU Ray gave this actor: more would fight the other actors for cores.
        torch.set_num_threads(1)
        self.loaded = load_model(folder, device, dtype)
        self.loaded.name = name
        self.job = job

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        items = [
            BatchItem(int(line), str(item_id), str(prompt), DecodingOptions.model_validate_json(options))
            for line, item_id, prompt, options in zip(
                rows["line"], rows["id"], rows["prompt"], rows["options"], strict=True
            )
        ]
        records = decode_items(self.loaded, items, self.job)
        return {
            "line": [item.line for item in items],
            "record": [json.dumps(records[item.line], ensure_ascii=False) for item in items],
        }


def connect(address: str | None) -> Any:
    """Ray, connected to `address` (a cluster's head, `auto`), or to a Ray instance started here;
    one already connected in this process is used as it is."""
    ray = import_ray()
    # Ray's own logs would bury gencli's one-line messages; its errors still reach gencli as exceptions.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        try:
            ray.init(
                address=address, logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False
            )
        except ConnectionError as problem:
            raise GencliError(
                f"cannot reach the Ray cluster at {address}: {problem}; check --ray-address"
            ) from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # gencli draws its own bar
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    return ray


def run_batch_on_ray(
    lines: Iterable[str],
    job: BatchJob,
    model: tuple[str, Path],
    device: str,
    dtype: str,
    workers: int,
    address: str | None = None,
    skip_ids: set[str] = frozenset(),
    on_done: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input line, in input order, as `batch.run_batch` does; `model` is
    (its name, its local folder), which every worker must be able to read."""
    ray = connect(address)
    planned = list(plan(lines, job.defaults, skip_ids))
    items = [entry for entry in planned if isinstance(entry, BatchItem)]
    decoded: dict[int, dict[str, Any]] = {}
    results = iter(())
    if items:
        dataset = ray.data.from_items(
            [
                {"line": i.line, "id": i.id, "prompt": i.prompt, "options": i.options.model_dump_json()}
                for i in items
            ]
        )
        name, folder = model
        results = dataset.map_batches(
            BatchWorker,
            fn_constructor_kwargs={
                "folder": str(folder),
                "name": name,
                "device": device,
                "dtype": dtype,
                "job": job,
            },
            batch_size=job.batch_size,
            batch_format="numpy",
            # No more actors than batches: an idle one would only load the model.
            compute=ray.data.ActorPoolStrategy(size=min(workers, -(-len(items) // job.batch_size))),
            num_cpus=1,
        )
        results = iter(results.iter_rows())
    try:
        for entry in planned:
            if isinstance(entry, BatchItem):
                while entry.line not in decoded:  # rows arrive in input order; waiting is the rule
                    row = next(results)
                    decoded[int(row["line"])] = json.loads(row["record"])
                yield decoded.pop(entry.line)
            elif entry is not None:
                yield entry
            if on_done:
                on_done(1)
    except ray.exceptions.RayError as problem:
        message = str(problem).strip().splitlines()[-1]
        raise GencliError(f"the Ray job failed: {message}") from None
