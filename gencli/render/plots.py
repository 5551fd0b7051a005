"""Images through matplotlib (the `plot` extra), for attention maps and bench reports."""

from __future__ import annotations

from typing import Any

from gencli.errors import GencliError


def load_pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise GencliError("images need matplotlib: pip install 'gencli[plot]'") from None
    return pyplot


def save_figure(figure: Any, pyplot: Any, path: str, flag: str) -> None:
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise GencliError(f"cannot write {path}: {error.strerror}; check the {flag} path") from None
    finally:
        pyplot.close(figure)
