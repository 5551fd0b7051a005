"""The first code a call runs (the `gencli` script, `python -m gencli`): a command line for a warm
process (--keep-alive) goes straight to one, before the CLI is even imported; anything else,
and a call no warm process takes, runs the CLI here.

A warm process decides itself whether a call is its own (it parses the command line with the CLI
it has loaded: model, load settings, keep_alive), so nothing here has to parse it: a call that
finds no warm process, or only others', costs a listing of the runtime folder, or a round trip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The commands a warm process can run for its caller (each starts with through_warm_process).
WARM_COMMANDS = frozenset(
    [
        "generate",
        "chat",
        "tokenize",
        "detokenize",
        "perplexity",
        "compare",
        "verify",
        "attention",
        "explain",
        "batch",
    ]
)


def main() -> None:
    arguments = sys.argv[1:]
    if (
        arguments
        and arguments[0] in WARM_COMMANDS
        and (code := _through_a_warm_process(arguments)) is not None
    ):
        sys.exit(code)
    from gencli.cli import main as run_here

    run_here()


def _through_a_warm_process(arguments: list[str]) -> int | None:
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "gencli" if base else Path("/tmp") / f"gencli-{os.getuid()}"
    if not any(folder.glob("*.sock")):
        return None
    from gencli.keep_alive import KeepAliveError, describe_caller, offer, warm_processes

    try:
        processes = warm_processes(folder)
    except (KeepAliveError, OSError):  # the CLI says what is wrong with the folder
        return None
    command = describe_caller(arguments)
    for process in processes:
        code = offer(process, command)
        if code is not None:
            return code
    return None
