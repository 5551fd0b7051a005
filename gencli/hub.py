"""Where a model's files are: here already, or fetched from the Hugging Face hub into its cache.

Imports neither torch nor transformers (`gencli pull` needs neither).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from gencli.catalog import DEMO_MODEL, bundled_model_dir, check_runnable, locate_model, looks_like_path
from gencli.errors import GencliError


class ModelUnavailable(GencliError):
    """A hub model that is neither cached nor reachable: the case the demo model can stand in for."""


def fallback_notice(name: str) -> str:
    return (
        f"{name} is not cached and the hub is unreachable: using the bundled demo model "
        "(--no-fallback makes this an error)"
    )


def hub_is_reachable(timeout_s: float = 2.0) -> bool:
    """One bounded request through huggingface_hub's own HTTP session (so proxy settings apply),
    instead of the hub client's retries, which take ~20 s to fail offline.

    It runs in a thread because a request timeout does not cover name resolution, which can hang.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    reachable = threading.Event()

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout_s)
            reachable.set()
        except Exception:  # any transport failure means: not reachable now
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return reachable.is_set()


def quiet_libraries() -> None:
    # Advice meant for library users would clutter a CLI's stderr; download bars stay on a terminal.
    from huggingface_hub.utils import disable_progress_bars

    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if not sys.stderr.isatty():
        disable_progress_bars()


# What a download fetches: config, tokenizer and generation files, and one copy of the weights.
_FILES_BESIDE_WEIGHTS = ["*.json", "*.txt", "*.model"]


def download_model(model_id: str) -> Path:
    """Fetch a hub model into the local Hugging Face cache: config.json first, so another
    architecture is refused before any weights; progress bars on a terminal. Returns its folder."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    quiet_libraries()
    try:
        config = Path(hf_hub_download(model_id, "config.json"))
        check_runnable(model_id, config.parent)
        files = HfApi().list_repo_files(model_id)
        weights = (
            ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["pytorch_model*.bin"]
        )
        return Path(snapshot_download(model_id, allow_patterns=_FILES_BESIDE_WEIGHTS + weights))
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError) as error:
        raise GencliError(
            f"cannot download model {model_id!r}: {str(error).splitlines()[0]} Check the hub id"
        ) from None


def pull_model(name: str) -> tuple[Path, str]:
    """`gencli pull`: (the folder, its source) after downloading or updating hub model `name`.
    The demo model and local folders are already here; an unreachable hub is said in one line
    within the reachability check's bound, not after the hub client's retries."""
    if name == DEMO_MODEL:
        return bundled_model_dir(), "bundled"
    if looks_like_path(name) or Path(name).expanduser().is_dir():
        raise GencliError(f"{name!r} is a local folder, not a hub id: there is nothing to pull")
    if not hub_is_reachable():
        raise GencliError(
            f"cannot pull {name!r}: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set); "
            "check the network or the HTTPS_PROXY setting"
        )
    return download_model(name), "hub cache"


def model_folder(name: str) -> Path:
    """The local folder to load `name` from, downloading a hub model that is not cached yet.

    A cached hub model is used as it is, with no network request: `gencli pull` updates it."""
    if name == DEMO_MODEL and not (bundled_model_dir() / "config.json").exists():
        raise GencliError("the bundled demo model is missing from this installation; reinstall gencli")
    folder = locate_model(name)
    if folder is not None:
        return folder
    if looks_like_path(name):
        raise GencliError(f"model folder {name!r} does not exist; check the --model path")
    if not hub_is_reachable():
        raise ModelUnavailable(
            f"model {name!r} is not in the local Hugging Face cache and the hub is unreachable "
            "(or HF_HUB_OFFLINE is set); pass a local folder with --model PATH, --model demo for the "
            "bundled model, or download it once with network access (gencli pull MODEL)"
        )
    return download_model(name)


def runnable_folder(name: str, fallback: bool = False) -> tuple[str, Path, str | None]:
    """(the model to run, its local folder, a notice or None): `name`, or with `fallback` the
    demo model standing in for a hub model that cannot be had, and the notice that says so.
    Checked from config.json alone, before any weights are read."""
    notice = None
    try:
        folder = model_folder(name)
    except ModelUnavailable:
        if not fallback:
            raise
        notice = fallback_notice(name)
        name, folder = DEMO_MODEL, model_folder(DEMO_MODEL)
    check_runnable(name, folder)
    return name, folder, notice
