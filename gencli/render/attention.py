"""`gencli attention`: a causal attention map as a terminal heatmap, or as a PNG."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from gencli.render.console import token_label
from gencli.render.plots import load_pyplot, save_figure

if TYPE_CHECKING:
    from gencli.scratch.probe import AttentionMap


_SHADES = "░▒▓█"  # four levels; masked cells (the future) stay blank


def _heat_style(level: float) -> str:
    """Dark blue (0) to yellow (1)."""
    low, high = (20, 24, 60), (250, 220, 40)
    red, green, blue = (round(a + (b - a) * level) for a, b in zip(low, high, strict=True))
    return f"rgb({red},{green},{blue})"


def print_attention_heatmap(amap: AttentionMap, console: Console, label_width: int = 10) -> None:
    """Rows are queries, columns keys; each cell is two characters, shaded by weight / max weight."""
    from rich.text import Text

    count = len(amap.tokens)
    fits = max(4, (console.width - label_width - 7) // 2)
    first = max(0, count - fits)  # long prompts: the most recent positions matter most
    positions = range(first, count)
    labels = {i: token_label(amap.tokens[i], label_width) for i in positions}
    peak = float(amap.weights[first:, first:].max()) or 1.0

    title = f"attention, layer {amap.layer}, head {amap.head}: rows attend to columns"
    shown = "" if first == 0 else f" (last {count - first} of {count} tokens)"
    console.print(title + shown, soft_wrap=True)
    for row in range(max(len(label) for label in labels.values())):
        header = "".join((labels[i][row] if row < len(labels[i]) else " ") + " " for i in positions)
        console.print(" " * (label_width + 6) + header, highlight=False, markup=False)
    for i in positions:
        line = Text(f"{i:>4} {labels[i]:>{label_width}} ")
        for j in positions:
            if j > i:
                line.append("  ")
                continue
            level = float(amap.weights[i, j]) / peak
            line.append(_SHADES[min(3, int(level * 4))] * 2, style=_heat_style(level))
        console.print(line, soft_wrap=True)
    console.print(f"shading: {_SHADES[0]} low … {_SHADES[-1]} high, relative to the top weight {peak:.3f}")


def save_attention_png(amap: AttentionMap, path: str) -> None:
    pyplot = load_pyplot()
    labels = [token_label(token, 16) for token in amap.tokens]
    size = max(4.0, 0.35 * len(labels) + 2)
    figure, axes = pyplot.subplots(figsize=(size, size))
    image = axes.imshow(amap.weights.numpy(), cmap="viridis", vmin=0.0)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query")
    axes.set_title(f"layer {amap.layer}, head {amap.head}")
    figure.colorbar(image, ax=axes, fraction=0.046)
    save_figure(figure, pyplot, path, "--png")
