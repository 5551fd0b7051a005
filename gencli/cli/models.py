"""`gencli models`, `gencli pull` and `gencli show`: what is here, fetching more, describing one.

None of them imports torch or transformers."""

from __future__ import annotations

from typing import Annotated

import typer

from gencli.cli.options import JsonOption

ModelArgument = Annotated[
    str, typer.Argument(help="Hugging Face hub id, model folder, or 'demo'.", metavar="MODEL")
]


def models(as_json: JsonOption = False) -> None:
    """List the models here: the bundled demo model and the local Hugging Face cache. Those gencli
    cannot run are listed apart, with the reason."""
    from gencli.catalog import list_models
    from gencli.render.console import print_json, stdout_console
    from gencli.render.models import print_models

    entries = list_models()
    if as_json:
        print_json([entry.to_dict() for entry in entries])
    else:
        print_models(entries, stdout_console())


def pull(model: ModelArgument) -> None:
    """Download a hub model into the local Hugging Face cache (config first: another architecture
    is refused before any weights), or bring a cached one up to date. The demo model is bundled:
    there is nothing to pull."""
    from gencli.catalog import describe_folder
    from gencli.hub import pull_model
    from gencli.render.console import stdout_console
    from gencli.render.models import print_models

    folder, source = pull_model(model)
    print_models([describe_folder(model, folder, source)], stdout_console(), suggest_pull=False)


def show(model: ModelArgument, as_json: JsonOption = False) -> None:
    """Describe a model that is here: architecture, parameters, context, dtype, size on disk,
    tokenizer and generation config. Reads its files; loads nothing."""
    from gencli.catalog import describe_model
    from gencli.render.console import print_json, stdout_console
    from gencli.render.models import print_model_description

    description = describe_model(model)
    if as_json:
        print_json(description.to_dict())
    else:
        print_model_description(description, stdout_console())
