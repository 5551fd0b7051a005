"""The `gencli` command: the root only registers commands; each lives in a module of its own.

torch and transformers are imported inside the commands that run a model, so `gencli --help`
stays fast.
"""

import os

import typer

from gencli.cli import (
    attention,
    batch,
    bench,
    chat,
    compare,
    config,
    explain,
    explore,
    generate,
    keep_alive,
    logs,
    models,
    perplexity,
    serve,
    tokenize,
    verify,
)
from gencli.cli.edge import GencliCommand, GencliGroup, guard_standard_streams, handle_sigterm
from gencli.threads import choose_wait_policy


def _print_version(value: bool) -> None:
    if value:
        from gencli import __version__

        typer.echo(f"gencli {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=GencliGroup,
    help="Generate text with GPT-2 and see how generation works inside.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Generate text with GPT-2 and see how generation works inside."""
    if context.invoked_subcommand is None:  # a bare `gencli` asks for the usage: not an error
        typer.echo(context.get_help())


for command in (
    generate.generate,
    chat.chat,
    serve.serve,
    compare.compare,
    bench.bench,
    perplexity.perplexity,
    batch.batch,
    verify.verify,
    attention.attention,
    explain.explain,
    explore.explore,
    tokenize.tokenize,
    tokenize.detokenize,
    models.models,
    models.pull,
    models.show,
    keep_alive.ps,
    keep_alive.stop,
    logs.logs,
):
    app.command(cls=GencliCommand)(command)
app.add_typer(config.config_app, name="config")


def main() -> None:
    choose_wait_policy(os.environ)  # before torch starts OpenMP (gencli.threads)
    guard_standard_streams()
    handle_sigterm()
    app(prog_name="gencli")
