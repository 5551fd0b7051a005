"""`gencli chat`: a session that keeps the model and its KV cache warm across turns.

The session itself is `gencli.chat.ChatSession`; this module is the REPL around it: reading
lines (with line editing and history on a terminal), the /commands, and printing.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import EXIT_INTERRUPTED, error, load_with_settings, notice, startup_status, terminated
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    DECODING,
    DTYPE,
    KEEP_ALIVE,
    MODE,
    MODEL,
    SOURCES,
    JsonOption,
    QuietOption,
    command_line_layers,
    with_options,
)
from gencli.errors import GencliError
from gencli.render.words import plural

COMMANDS = {
    "/help": "this list",
    "/cache": "the KV cache now, layer by layer: positions and bytes in use and allocated",
    "/set KEY VALUE": "change a decoding option (as -o KEY VALUE), e.g. /set temperature 0.7",
    "/show": "the session's settings, and the transcript's tokens against the model's context",
    "/undo": "drop the last turn (the cache is cropped back, nothing is recomputed)",
    "/reset": "start over with an empty transcript",
    "/save FILE": "write the transcript and its KV cache to FILE",
    "/load FILE": "continue a session saved with /save",
    "/quit": "leave (so does Ctrl-D); Ctrl-C stops a reply and keeps the session",
}


class Repl:
    def __init__(self, session: Any, as_json: bool, quiet: bool):
        from gencli.render.console import stderr_console

        self.session = session
        self.as_json = as_json
        self.quiet = quiet
        self.console = stderr_console()
        self.failures = 0

    def turn(self, text: str) -> None:
        from gencli.chat import ChatInterrupted
        from gencli.render.console import print_json
        from gencli.render.stats import print_turn_stats
        from gencli.render.text import HeldBackWriter

        writer = None if self.as_json else HeldBackWriter(self.session.decoding.stop)
        try:
            turn = self.session.send(text, writer)
        except ChatInterrupted as interrupted:
            turn = interrupted.turn
        except KeyboardInterrupt:  # before the first token: the entry is not kept
            self.session.prefix.resync()
            if writer is not None:
                writer.finish()
            notice("interrupted before the reply began; the entry was not kept")
            return
        if writer is not None:
            writer.finish(turn.reply)
        if turn.dropped_turns:
            notice(
                f"dropped the {plural(turn.dropped_turns, 'oldest turn')} to fit the context of "
                f"{self.session.loaded.context_length} tokens; the cache was rebuilt for the rest"
            )
        if self.as_json:
            print_json(turn.to_dict())
        if not self.quiet:
            print_turn_stats(turn, self.console)

    def command(self, line: str) -> bool:
        """Run a /command; False when it ends the session."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit", "/bye"):
            return False
        if name == "/help":
            for usage, meaning in COMMANDS.items():
                self.console.print(f"{usage:<16} {meaning}", highlight=False, markup=False)
        elif name == "/cache":
            self.show_cache()
        elif name == "/set":
            self.set_option(argument)
        elif name == "/show":
            self.show()
        elif name == "/undo":
            dropped = self.session.undo()
            self.console.print(
                "nothing to undo" if dropped is None else self._cache_line("dropped the last turn")
            )
        elif name == "/reset":
            self.session.reset()
            self.console.print("the transcript and the cache are empty")
        elif name in ("/save", "/load"):
            path = Path(self._one_path(name, argument)).expanduser()
            saved = name == "/save"
            positions = self.session.save(path) if saved else self.session.load(path)
            held = f"{plural(len(self.session.turns), 'turn')} and {plural(positions, 'cached position')}"
            self.console.print(f"saved {held} to {path}" if saved else f"loaded {held} from {path}")
        else:
            raise GencliError(f"unknown command {name}; /help lists them")
        return True

    @staticmethod
    def _one_path(name: str, argument: str) -> str:
        words = shlex.split(argument) if argument else []
        if len(words) != 1:
            raise GencliError(f"{name} takes one FILE")
        return words[0]

    def _cache_line(self, what: str) -> str:
        return (
            f"{what}: the transcript is {plural(self.session.transcript_tokens(), 'token')}, the cache holds "
            f"{plural(len(self.session.prefix.token_ids), 'position')}"
        )

    def set_option(self, argument: str) -> None:
        from gencli.settings import text_values

        key, _, value = argument.partition(" ")
        if not key or not value.strip():
            raise GencliError("/set takes KEY VALUE, e.g. /set temperature 0.7 (see /show for the keys)")
        values = text_values([(key, value.strip())], name=lambda written: f"/set {written}")
        self.session.options = self.session.options.model_copy(update=values)
        self.console.print(f"{key} = {values[next(iter(values))]!r}", highlight=False, markup=False)

    def show(self) -> None:
        session = self.session
        for key, value in session.options.model_dump(mode="json").items():
            self.console.print(f"{key:<22} {value!r}", highlight=False, markup=False)
        for key, value in (
            ("model", session.loaded.name),
            ("mode", session.mode),
            ("template", session.template.text),
        ):
            self.console.print(f"{key:<22} {value!r}", highlight=False, markup=False)
        self.console.print(
            f"{len(session.turns)} turns · transcript {session.transcript_tokens()} of "
            f"{session.loaded.context_length} tokens (the model's context) · cache holds "
            f"{len(session.prefix.token_ids)} positions",
            highlight=False,
        )

    def show_cache(self) -> None:
        from gencli.cache import snapshot_cache

        snapshot = snapshot_cache(self.session.prefix.cache, 0)
        if not snapshot.layers:
            self.console.print("The KV cache is empty.")
            return
        from gencli.render.cache import cache_table

        self.console.print(cache_table(snapshot, "now"))

    def handle(self, line: str) -> bool:
        """One line: a /command or a turn. Problems are one line on stderr; the session goes on.
        False when the session ends."""
        text = line.rstrip("\n")
        if not text.strip():
            return True
        try:
            if text.startswith("/"):
                return self.command(text.strip())
            self.turn(text)
        except GencliError as problem:
            error(str(problem))
            self.failures += 1
        except OSError as problem:
            error(f"{problem.filename or ''}: {problem.strerror or problem}".lstrip(": "))
            self.failures += 1
        if terminated():  # SIGTERM ends the session; Ctrl-C only the reply
            raise typer.Exit(EXIT_INTERRUPTED)
        return True


@contextlib.contextmanager
def _line_editing() -> Any:
    """readline editing and a history kept in the user's data directory, for a terminal."""
    try:
        import readline
    except ImportError:  # not on every platform
        yield
        return
    from gencli.settings import user_data_dir

    history = user_data_dir() / "chat_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)


def _interactive(repl: Repl) -> None:
    print("Type a line to continue the document; /help lists the commands, Ctrl-D leaves.", file=sys.stderr)
    with _line_editing():
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print(file=sys.stderr)
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as in a shell
                if terminated():
                    raise typer.Exit(EXIT_INTERRUPTED) from None
                print("^C", file=sys.stderr)
                continue
            if not repl.handle(line):
                return


@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES, KEEP_ALIVE)
def chat(
    prompt: Annotated[
        str | None, typer.Argument(help="A first entry, sent before any other.", metavar="[PROMPT]")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            help="How each entry joins the document; '{text}' is the entry, and the part before it "
            "ends a reply when the model writes it.  [default: '\\nUser: {text}\\nAssistant:']",
            show_default=False,
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Plain continuation: entries are appended as they are.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Keep one model and one KV cache warm across turns: each turn prefills only its new tokens.

    GPT-2 is not a chat model: the session is one growing document. Each line you enter is
    appended through --template, the model continues it, and its reply is appended too. Every
    reply equals a one-shot generate on the whole transcript so far. On a terminal, a prompt
    with line editing and history; otherwise each stdin line is a turn (or a /command), replies
    go to stdout, and --json prints one record per turn. Modes: kv-cache, scratch, generate.
    """
    # A session on a terminal stays here: its line editing needs the terminal itself.
    through_warm_process(flags, stays_here=sys.stdin is not None and sys.stdin.isatty())
    if raw and template is not None:
        raise GencliError("--raw and --template both say how entries join; give one of them")
    layers = command_line_layers(flags)
    with startup_status("starting") as step:
        step("importing torch and transformers")
        from gencli.chat import DIALOGUE_TEMPLATE, RAW_TEMPLATE, ChatSession, ChatTemplate

        default = RAW_TEMPLATE if raw else DIALOGUE_TEMPLATE
        chosen = ChatTemplate(default if template is None else template)
        loaded, resolved = load_with_settings(layers, step)
        step(f"building the {resolved.settings.mode} engine")
        session = ChatSession(loaded, resolved.settings.mode, resolved.settings.decoding, chosen)
    repl = Repl(session, as_json, quiet)
    if prompt is not None and not repl.handle(prompt):
        return
    if sys.stdin is not None and sys.stdin.isatty():
        _interactive(repl)
    elif sys.stdin is not None:
        lines = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
        for raw in lines:
            # Bytes that are not UTF-8 reach the prompt check as surrogates, and it refuses them.
            line = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
            if not repl.handle(line):
                break
    if repl.failures and not sys.stdin.isatty():
        raise typer.Exit(1)
