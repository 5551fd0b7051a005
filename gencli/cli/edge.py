"""Where the core meets the terminal: errors become one line and an exit code, never a traceback;
notices and the start-up status go to stderr."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import typer.core

from gencli.errors import GencliError
from gencli.settings import Layer, ResolvedSettings, Settings, resolve

if TYPE_CHECKING:
    from gencli.loading import LoadedModel

EXIT_INTERRUPTED = 130
# When the command started, for the total time in the stats line (imports of the CLI excluded).
STARTED = time.perf_counter()
# The command line the group was given (what --keep-alive hands to the warm process).
_INVOCATION: list[str] = []


def since_start() -> float:
    return time.perf_counter() - STARTED


def invocation() -> list[str]:
    return list(_INVOCATION)


def new_call() -> None:
    """A call in the warm process starts afresh: its clock, no SIGTERM seen yet, and in its
    start-up until that ends."""
    global STARTED
    STARTED = time.perf_counter()
    _terminated.clear()
    with _start_up.lock:
        _start_up.starting, _start_up.deferred = True, None


class _StartUp:
    """In the warm process, whether a call is still starting, and a signal it got meanwhile."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starting = False
        self.deferred: int | None = None


_start_up = _StartUp()


def interrupt_call(number: int) -> None:
    """A caller's Ctrl-C or SIGTERM, in the warm process (from its reader thread): delivered to
    the command at once, or, while the call is still starting (importing, loading: a signal then
    could leave a module half imported in a process that lives on), when its start-up ends."""
    with _start_up.lock:
        if _start_up.starting:
            _start_up.deferred = number
            return
    signal.pthread_kill(threading.main_thread().ident, number)


def end_of_start_up() -> None:
    """The command's start-up is over: from now on Ctrl-C stops the work and keeps what it made
    (KeyboardInterrupt), where until now it ended the process at once (gencli/__init__.py). In
    the warm process, a signal deferred meanwhile is raised now."""
    from gencli import quit_while_starting

    if signal.getsignal(signal.SIGINT) is quit_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with _start_up.lock:
        deferred, _start_up.deferred, _start_up.starting = _start_up.deferred, None, False
    if deferred == signal.SIGTERM:
        _terminated.set()
        raise Terminated
    if deferred is not None:
        raise KeyboardInterrupt


# Every character str.splitlines() breaks at: a file name or value holding one must not split a message.
_LINE_BREAKS = str.maketrans(
    {
        character: character.encode("unicode_escape").decode()
        for character in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
    }
)


def one_line(message: str) -> str:
    """The message with its line breaks written as escapes (\\n, \\x1e, ...)."""
    return message.translate(_LINE_BREAKS)


def error(message: str) -> None:
    sys.stderr.write(f"gencli: error: {one_line(message)}\n")
    sys.stderr.flush()


def notice(message: str) -> None:
    sys.stderr.write(f"gencli: {one_line(message)}\n")
    sys.stderr.flush()


class GencliGroup(typer.core.TyperGroup):
    """Turns every user mistake into one line on stderr and an exit code, never a traceback."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        given = args[0] if args else kwargs.get("args")
        _INVOCATION[:] = sys.argv[1:] if given is None else list(given)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except GencliError as problem:
            error(str(_for_flags(problem)))
            code = problem.exit_code
        except typer.TyperException as problem:
            message = problem.format_message().replace("Value error, ", "")
            if message:
                hint = f" (see '{problem.ctx.command_path} --help')" if getattr(problem, "ctx", None) else ""
                error(message + hint)
            code = problem.exit_code
        except typer.Abort:
            code = EXIT_INTERRUPTED
        except OSError as problem:
            code = _os_error(problem)
        sys.exit(code if isinstance(code, int) else 0)


def _os_error(problem: OSError) -> int:
    """An operating-system error the core did not word. Without a file name it was writing the
    output (a full disk, a closed pipe): exit 1, and stdout is let go so that Python's exit
    does not fail on it again. With one, a path the user gave: exit 2."""
    if problem.filename is None:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(problem, BrokenPipeError):  # `| head` closing early is no error
            error(f"cannot write the output: {problem.strerror or problem}")
        return 1
    error(f"{problem.filename}: {problem.strerror or problem}; check the path")
    return 2


class _ClosedStream(io.TextIOBase):
    """What stdout becomes when the shell closed it (`>&-`): writing fails as it does on a closed
    descriptor, so the output error is the usual one line and exit 1."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


def _is_writable(descriptor: int) -> bool:
    """False for a closed descriptor, and for one a launcher reused to read a file (a shell
    script's own, once the shell found the number free)."""
    try:
        mode = fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False
    return mode in (os.O_WRONLY, os.O_RDWR)


def guard_standard_streams() -> None:
    """Streams the shell closed (`>&-`, `2>&-`). Descriptors 1 and 2 are held open on the null
    device, so that no file gencli opens later gets their number (a library's write to stderr
    would land in it). A closed stderr only silences the notices; a closed stdout fails at the
    first write of output, as in the shell."""
    for descriptor, name in ((1, "stdout"), (2, "stderr")):
        if _is_writable(descriptor):
            continue
        null = os.open(os.devnull, os.O_WRONLY if name == "stderr" else os.O_RDONLY)
        os.dup2(null, descriptor)
        os.close(null)
        setattr(sys, name, open(os.devnull, "w") if name == "stderr" else _ClosedStream())  # noqa: SIM115


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (what was generated is kept), but it also ends a chat."""


_terminated = threading.Event()


def _terminate(signal_number: int, frame: object) -> None:
    _terminated.set()
    raise Terminated


def terminated() -> bool:
    """Whether SIGTERM has arrived: code that handles an interruption and goes on (chat) stops."""
    return _terminated.is_set()


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def _for_flags(problem: GencliError) -> GencliError:
    """The core's error, worded for the command line where it names a setting."""
    worded = getattr(problem, "worded", None)
    return worded("--max-new-tokens") if worded else problem


OPTION_FLAGS = ("-o", "--option")
# argv cannot hold a NUL, so it separates KEY from VALUE unambiguously.
KEY_VALUE_SEPARATOR = "\0"


class GencliCommand(typer.core.TyperCommand):
    """Reads `-o KEY VALUE` (two words, as llm does), which typer cannot declare, as one value."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        joined, index = [], 0
        while index < len(args):
            word = args[index]
            if word == "--":
                joined.extend(args[index:])
                break
            if word in OPTION_FLAGS and index + 2 < len(args):
                joined += [word, args[index + 1] + KEY_VALUE_SEPARATOR + args[index + 2]]
                index += 3
                continue
            joined.append(word)
            index += 1
        return super().parse_args(ctx, joined)


def split_key_values(words: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for word in words or []:
        key, separator, value = word.partition(KEY_VALUE_SEPARATOR)
        if not separator:
            raise GencliError(f"-o takes a key and a value, as in '-o min_p 0.05'; got only {key!r}")
        pairs.append((key, value))
    return pairs


class StartupStatus:
    """A transient spinner on stderr naming the start-up step (importing, loading the model), as
    ollama shows one; nothing off a terminal. `step(text)` changes its text; `stop()` clears it."""

    def __init__(self) -> None:
        self._status: Any = None

    def step(self, text: str) -> None:
        if not sys.stderr.isatty():
            return
        if self._status is None:
            from rich.console import Console

            self._status = Console(stderr=True).status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@contextlib.contextmanager
def startup_status(first_step: str) -> Iterator[Callable[[str], None]]:
    """The spinner for the block, the command's start-up; yields `step(text)`. Cleared when the
    block ends, however, and the start-up is then over (`end_of_start_up`)."""
    status = StartupStatus()
    status.step(first_step)
    try:
        yield status.step
    finally:
        status.stop()
        end_of_start_up()


# In the warm process (--keep-alive), the models loaded so far, by what loaded them; None elsewhere.
_LOADED: dict[tuple[str, ...], LoadedModel] | None = None


def keep_models_loaded() -> None:
    """From now on, a model once loaded stays loaded for later calls (the warm process)."""
    global _LOADED
    _LOADED = {}


def load(settings: Settings, step: Callable[[str], None], arch: str | None = None) -> LoadedModel:
    """Load the model the settings name (or `arch` with random weights), naming each step on the
    start-up status; tell when the demo model stands in."""
    model = str(Path(settings.model).resolve()) if Path(settings.model).is_dir() else settings.model
    key = (
        model,
        settings.device,
        settings.dtype,
        str(settings.fallback),
        settings.quantize,
        settings.kernels,
    )
    if arch is None and _LOADED is not None and key in _LOADED:
        loaded = _LOADED[key]
    elif arch is not None:
        step("importing torch and transformers")
        from gencli.loading import random_model

        step(f"building {arch} with random weights")
        return random_model(
            arch,
            settings.device,
            settings.dtype,
            quantize=settings.quantize,
            kernels=settings.kernels,
            on_step=step,
        )
    else:
        from gencli.hub import quiet_libraries, runnable_folder

        # Where the model is, or why it cannot be had, is known without torch: say it at once.
        quiet_libraries()
        found = runnable_folder(settings.model, settings.fallback)
        step("importing torch and transformers")
        from gencli.loading import load_from_folder

        step(f"loading model {settings.model}")
        loaded = load_from_folder(
            *found, settings.device, settings.dtype, settings.quantize, settings.kernels, on_step=step
        )
        if _LOADED is not None:
            _LOADED[key] = loaded
    for message in loaded.notices:
        notice(message)
    return loaded


def load_with_settings(
    layers: list[Layer], step: Callable[[str], None], arch: str | None = None
) -> tuple[LoadedModel, ResolvedSettings]:
    """Load the model the layers name, then resolve them again with the checkpoint's
    generation_config.json beneath them: only the loaded model tells which folder that is.
    Returns (loaded model, resolved settings)."""
    loaded = load(resolve(layers).settings, step, arch)
    return loaded, resolve_with_checkpoint(layers, loaded.folder)


def resolve_with_checkpoint(layers: list[Layer], folder: Path | None) -> ResolvedSettings:
    """The layers with the checkpoint's generation_config.json beneath them."""
    resolved = resolve(layers, folder)
    if resolved.ignored_checkpoint_keys:
        notice(
            f"the checkpoint's generation_config.json sets {', '.join(resolved.ignored_checkpoint_keys)}, "
            "which gencli cannot run identically in every mode: ignored"
        )
    return resolved
