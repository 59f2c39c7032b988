"""The power report: rows of figures, each labelled measured or modelled, as a terminal table,
JSON and a PNG chart.

Labelling rule: a figure is ``"measured"`` only when every input to it was measured (a timer, an
energy counter, a user's meter reading); if any input is a model or a nominal value (a datasheet
constant, ``--cpu-watts``, a simulated cycle count at Fmax), it is ``"modelled"``. Speed and energy
carry separate labels, and a modelled and a measured number are never combined into one figure
that is called measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("measured", "modelled")


@dataclass
class Row:
    """One target x model line. ``None`` means "not available" (the reason is in ``notes``)."""

    target: str  # cpu, gpu, fpga, hls, ops
    model: str  # "MatMul-free" or "Transformer++"
    variant: str  # e.g. "packed 2-bit, C kernel", "dense fp32"
    tokens_per_s: float | None = None
    speed_kind: str | None = None
    joules_per_token: float | None = None
    energy_kind: str | None = None
    watts: float | None = None
    idle_watts: float | None = None
    joules_per_token_above_idle: float | None = None
    batch: int | None = None
    context: int | None = None
    source: str = ""
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value, kind in (("tokens_per_s", self.tokens_per_s, self.speed_kind),
                                  ("joules_per_token", self.joules_per_token, self.energy_kind)):  # fmt: skip
            if value is not None and kind not in KINDS:
                raise ValueError(f"Row {self.target}/{self.model}: {name} needs a kind in {KINDS}, got {kind!r}")
        if self.joules_per_token_above_idle is not None and self.energy_kind != "measured":
            raise ValueError("joules above idle exist only for measured energy")

    @property
    def label(self) -> str:
        return f"{self.target}: {self.model} ({self.variant})"


@dataclass
class Skip:
    """A target or row that could not run, with a one-line reason."""

    target: str
    reason: str
    model: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows],
                "skipped": [asdict(s) for s in self.skipped], "labelling": __doc__.split("\n\n")[1]}  # fmt: skip


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    a = abs(v)
    if a == 0:
        s = "0"
    elif a >= 1e4 or a < 1e-3:
        s = f"{v:.3g}"
    elif a >= 100:
        s = f"{v:.0f}"
    else:
        s = f"{v:.3g}"
    return s + unit


def _kind(k: str | None) -> str:
    return {"measured": "meas", "modelled": "model"}.get(k or "", "")


COLUMNS = ["target", "model", "variant", "tokens/s", "", "J/token", "", "W", "J/tok >idle", "B", "ctx"]


def table_rows(report: Report) -> list[list[str]]:
    return [[r.target, r.model, r.variant, _fmt(r.tokens_per_s), _kind(r.speed_kind), _fmt(r.joules_per_token),
             _kind(r.energy_kind), _fmt(r.watts), _fmt(r.joules_per_token_above_idle),
             "" if r.batch is None else str(r.batch), "" if r.context is None else str(r.context)]
            for r in report.rows]  # fmt: skip


def footer_lines(report: Report) -> list[str]:
    """One line per skipped target and per distinct row note (e.g. why a row has no energy)."""
    lines = [f"skipped {s.target}{' ' + s.model if s.model else ''}: {s.reason}" for s in report.skipped]
    seen = set()
    for r in report.rows:
        if r.notes and (r.target, r.notes) not in seen:
            seen.add((r.target, r.notes))
            lines.append(f"note {r.target}: {r.notes}")
    return lines


def render_text(report: Report) -> str:
    """Plain-text table, skipped rows (one line each) and the labelling legend."""
    rows = [COLUMNS] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += footer_lines(report)
    lines.append("meas = measured, model = modelled (see 'source' in the JSON); never mixed in one figure.")
    return "\n".join(lines)


def print_table(report: Report, console_file=None) -> None:
    """Print with ``rich`` when installed and writing to a terminal, else the plain table."""
    import sys

    if not (console_file or sys.stdout).isatty():
        print(render_text(report), file=console_file)
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render_text(report), file=console_file)
        return
    t = Table(title="matmulfree power (per generated token)")
    for c in COLUMNS:
        t.add_column(c or "kind")
    for r in table_rows(report):
        t.add_row(*r)
    con = Console(file=console_file)
    con.print(t)
    for line in footer_lines(report):
        con.print(line)
    con.print("meas = measured, model = modelled (see 'source' in the JSON); never mixed in one figure.")


def write_json(report: Report, path: str | Path) -> Path:
    from ..checkpoint import atomic_write_text

    path = atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    path.chmod(0o644)  # mkstemp creates 0600
    return path


def write_png(report: Report, path: str | Path) -> Path | None:
    """Two log-scale bar panels (joules/token, tokens/s) per row; measured bars solid, modelled
    bars hatched and outlined. Returns ``None`` when matplotlib is missing or nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.ticker import LogLocator, NullFormatter
    except ImportError:
        return None
    panels = [("joules_per_token", "energy_kind", "joules per token (log)"),
              ("tokens_per_s", "speed_kind", "tokens per second (log)")]  # fmt: skip
    if not any(getattr(r, key) for r in report.rows for key, _, _ in panels):
        return None
    colors = {"MatMul-free": "#1f77b4", "Transformer++": "#d62728"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(4, len(report.rows)) + 1.8))
    labels = [r.label for r in report.rows]
    for ax, (key, kind_key, title) in zip(axes, panels):
        for i, r in enumerate(report.rows):
            v, kind = getattr(r, key), getattr(r, kind_key)
            if not v or v <= 0:
                ax.text(0.01, i, "n/a", va="center", fontsize=8, color="gray", transform=ax.get_yaxis_transform())
                continue
            c = colors.get(r.model, "#7f7f7f")
            modelled = kind == "modelled"
            ax.barh(i, v, color="white" if modelled else c, edgecolor=c, hatch="///" if modelled else None,
                    linewidth=1.2)  # fmt: skip
            ax.text(v, i, f" {_fmt(v)}", va="center", fontsize=8)
        vals = [getattr(r, key) for r in report.rows if getattr(r, key) and getattr(r, key) > 0]
        if vals:
            ax.set_xlim(min(vals) / 3, max(vals) * 6)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if ax is axes[0] else [""] * len(labels), fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # first row on top
        ax.set_title(title)
        ax.grid(axis="x", which="both", alpha=0.3)
    legend = [Patch(facecolor=c, edgecolor=c, label=f"{m}, measured") for m, c in colors.items()]
    legend += [Patch(facecolor="white", edgecolor=c, hatch="///", label=f"{m}, modelled") for m, c in colors.items()]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    meta = report.meta
    fig.suptitle(f"matmulfree power: {meta.get('checkpoint', '')}  (batch {meta.get('batch', '?')}, "
                 f"context {meta.get('context', '?')})", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["KINDS", "Report", "Row", "Skip", "print_table", "render_text", "write_json", "write_png"]
