"""The ratio tables of a benchmark run: Markdown (printed and written) and a bar chart (PNG).

A table has a ``base`` column (``fused`` for kernels, ``ganplug`` for steps) and ``others``
(``eager``/``plain`` and, unless ``--no-compile``, ``compile``); its ratio columns are
``other/base`` of the times, so > 1 means ganplug is faster. Titles name only the columns
measured. Each row's times come from one interleaved run (:func:`ganplug.bench.timing.measure`).
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ganplug.bench.timing import Timing

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# a column in the titles, where its name is not the word
COLUMN_NAMES = {"fused": "fused ops", "eager": "eager PyTorch", "compile": "torch.compile", "plain": "the plain loop"}


@dataclass
class Row:
    """One row: its ``name``, a :class:`Timing` per column that ran, the reason per column that
    was refused, and (steps) the real samples one call consumes."""

    name: str
    times: dict[str, Timing] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    samples: int | None = None


@dataclass
class Table:
    """Rows of one kind (``kernels`` or ``steps``) about ``subject``, compared to ``base``."""

    subject: str
    base: str
    others: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)

    @property
    def comparison(self) -> str:
        """``fused ops vs eager PyTorch``: the columns measured, in words."""
        return " vs ".join(COLUMN_NAMES.get(column, column) for column in (self.base, *self.others))

    @property
    def title(self) -> str:
        return f"{self.subject}: {self.comparison}"

    def ratio(self, row: Row, other: str, stat: str = "median") -> float | None:
        """``other``'s time over ``base``'s in ``row`` (> 1: base faster), None where one is missing."""
        if other not in row.times or self.base not in row.times:
            return None
        den = row.times[self.base].stat(stat)
        return row.times[other].stat(stat) / den if den > 0 else None


def format_time(seconds: float | None) -> str:
    """``12.34 ms`` / ``5.6 us``; ``-`` for None."""
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def format_ratio(ratio: float | None) -> str:
    """``1.23x``; ``-`` for None."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def markdown(table: Table, stat: str = "median") -> list[str]:
    """The table as Markdown lines: per row the columns' times (``stat``), samples/s of the base
    (steps), ``other/base`` on ``stat`` and, unless ``stat`` is min, on the minimum (the least
    load-sensitive statistic); refused columns get a footnote with the reason."""
    with_min = stat != "min"
    with_rate = any(row.samples for row in table.rows)
    ratios = [f"{other}/{table.base}" for other in table.others]
    head = ["case", *(table.base, *table.others)]
    head += [f"{table.base} samples/s"] if with_rate else []
    head += ratios + ([f"{r} (min)" for r in ratios] if with_min else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    notes: list[str] = []
    for row in table.rows:
        cells = [row.name.replace("|", "\\|")]
        for column in (table.base, *table.others):
            if column in row.refused:
                note = f"{row.refused[column]}"
                if note not in notes:
                    notes.append(note)
                cells.append(f"refused[{notes.index(note) + 1}]")
            else:
                cells.append(format_time(row.times[column].stat(stat)) if column in row.times else "-")
        if with_rate:
            base = row.times.get(table.base)
            cells.append(f"{row.samples / base.stat(stat):.0f}" if base and row.samples else "-")
        cells += [format_ratio(table.ratio(row, other, stat)) for other in table.others]
        if with_min:
            cells += [format_ratio(table.ratio(row, other, "min")) for other in table.others]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return lines


def header(devices: list[str], tables: list[Table], stat: str = "median") -> list[str]:
    """The report's first lines: what ``tables`` compare, date, torch, threads, load, the ops'
    backend per device."""
    import torch

    from ganplug.ops import backend

    named = []
    for device in devices:
        name = f" ({torch.cuda.get_device_name(device)})" if torch.device(device).type == "cuda" else ""
        named.append(f"{device}={backend(device)}{name}")
    return [
        "# ganplug bench: " + "; ".join(table.comparison for table in tables),
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"os.cpu_count() {os.cpu_count()}, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- fused ops backend: {', '.join(named)}",
        f"- {stat} of the rounds per column; ratios are other/ganplug from the same run, so > 1 means ganplug is faster",
        "",
    ]


def write_markdown(path: Path, lines: list[str], tables: list[Table], stat: str = "median") -> None:
    """``lines`` (the header), then each table under its title, to ``path``."""
    body = list(lines)
    for table in tables:
        body += [f"## {table.title}", ""] + markdown(table, stat) + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body))


def write_png(path: Path, tables: list[Table], stat: str = "median") -> None:
    """:func:`chart_figure` of ``tables`` as a PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart_figure(tables, stat).savefig(path, dpi=100)


def chart_figure(tables: list[Table], stat: str = "median") -> Figure:
    """A horizontal bar chart of every table's ``other/base`` ratios (log scale, bars from the 1x
    line), one panel per table (titled :attr:`Table.title`), one bar group per row (matplotlib,
    Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [t for t in tables if t.rows]
    heights = [max(1.5, 0.22 * len(t.rows) * len(t.others) + 1.0) for t in shown]
    figure = Figure(figsize=(10, sum(heights) + 0.2 * len(shown)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(shown), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, table in zip(axes, shown):
        bar = 0.8 / len(table.others)
        for k, other in enumerate(table.others):
            ratios = [table.ratio(row, other, stat) for row in table.rows]
            ys = [i + (k - (len(table.others) - 1) / 2) * bar for i in range(len(table.rows))]
            kept = [(y, r) for y, r in zip(ys, ratios) if r is not None]
            if kept:
                ax.barh(
                    [y for y, _ in kept], [r - 1 for _, r in kept], height=bar, left=1, label=f"{other}/{table.base}"
                )
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yticks(range(len(table.rows)), [row.name for row in table.rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"time ratio ({stat}); > 1: {table.base} faster")
        ax.set_title(table.title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    return figure
