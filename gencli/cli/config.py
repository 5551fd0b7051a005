"""`gencli config show` and `gencli config path`: the effective settings and where they came from."""

from __future__ import annotations

from typing import Any

import typer

from gencli.cli.edge import GencliCommand
from gencli.cli.options import (
    DECODING,
    DTYPE,
    LOG,
    MODE,
    MODEL,
    SOURCES,
    JsonOption,
    command_line_layers,
    with_options,
)

config_app = typer.Typer(
    help="Settings: built-in defaults < the checkpoint's generation_config.json < the user config file "
    "< --config FILE or --preset NAME < GENCLI_* environment variables < flags.",
    no_args_is_help=True,
)


@config_app.command(cls=GencliCommand)
@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES, LOG)
def show(as_json: JsonOption = False, flags: dict[str, Any] | None = None) -> None:
    """Print every setting's effective value and where it came from. Takes the same options as
    generate, so it shows what a run with them would use."""
    from gencli.catalog import locate_model
    from gencli.render.console import print_json, stdout_console
    from gencli.render.settings import print_settings
    from gencli.settings import resolve

    layers = command_line_layers(flags)
    resolved = resolve(layers)
    resolved = resolve(layers, locate_model(resolved.settings.model))
    if as_json:
        print_json(
            {
                key: {"value": value, "source": resolved.origins[key]}
                for key, value in resolved.settings.model_dump(mode="json").items()
            }
        )
    else:
        print_settings(resolved, stdout_console())


@config_app.command()
def path() -> None:
    """Print where gencli reads the user config file from (it need not exist)."""
    from gencli.settings import user_config_path

    typer.echo(str(user_config_path()))
