"""The tracker's graph and CSV files (perforatedai spec §7), written off the training thread.

``RunOutputs(save_dir, save_name)`` turns a plain-data history into the files perforatedai writes on every
``add_validation_score`` call (same names and columns, spec §7.2), all under ``save_dir``:

========================================  ==========================================================================
``{save_name}{extra}.png``                2800x1400 figure, 2x2 panels: scores (validation, running, extra scores,
                                          faint reverted epochs, "Global best (y)" / "Epoch Last Improved" markers,
                                          vertical lines where dendrites were added), best score per architecture
                                          against its parameter count (replaces perforatedai's "Best PBScores",
                                          which is empty in open source), learning rate, epoch times
``{p}Scores.csv``                         ``Epochs, Validation Scores, Validation Running Scores, <extra scores>``
                                          (stacked blocks: each series is its own block of rows)
``{p}Times.csv``                          ``Epochs, Normal Epoch Times, PAI Epoch Times`` (or the four train/val
                                          columns when ``manual_train_switch``)
``{p}learning_rate.csv``                  ``Epochs, learning_rate``
``{p}switch_epochs.csv``                  ``Switch Number, Switch Epoch``
``{p}param_counts.csv``                   ``Switch Number, Param Count``
``{p}_best_arch_scores.csv``              ``Param Counts, Max Valid Scores, <extra scores at that epoch>``
``{p}Best PBScores.csv``                  header only, when ``layer_names`` is given (as perforatedai in open source)
========================================  ==========================================================================

with ``p = save_name + extra`` (``extra`` is ``""`` for the live files, or a snapshot suffix such as
``"_beforeSwitch_0"``).

Cost on the caller: ``update`` copies the history (plain floats) and queues it; a single background thread
writes the files. Rendering the PNG takes 0.3-1 s, so the queue is latest-wins per file set: while one figure
renders, newer updates for the same ``extra`` replace each other and only the newest is drawn (snapshots with
other suffixes are all kept). The CSVs are written by the same thread: writing them on the caller's thread would
make each file operation wait for the GIL while the worker renders. ``flush()`` blocks until everything queued
is on disk, ``close()`` (also run at interpreter exit) flushes and stops the thread. Every file is replaced
atomically (temp file + rename), so a reader never sees half a PNG or CSV.

History keys (perforatedai's tracker ``member_vars`` names, so its dict can be passed as is; all optional):

* ``accuracies`` (alias ``validation_scores``), ``running_accuracies`` (``running_scores``), ``n_accuracies``
* ``extra_scores`` / ``extra_scores_without_graphing``: ``{name: [score per epoch]}``; ``test_scores`` (drawn as
  "Test Scores" unless an extra score already holds the same values, as ``add_test_score`` does)
* ``training_learning_rates`` (``learning_rates``)
* ``n_epoch_times`` (``epoch_times``), ``p_epoch_times``; with ``manual_train_switch``: ``n_train_times``,
  ``p_train_times``, ``n_val_times``, ``p_val_times``
* ``switch_epochs``, ``n_switch_epochs``, ``param_counts``
* ``overwritten_vals`` (list of score lists of reverted epochs), ``overwritten_extras`` (list of dicts)
* ``epoch_last_improved``, ``global_best_validation_score``, ``maximizing_score`` (True), ``doing_pai`` (True),
  ``mode`` (``"n"``), ``best_arch_scores`` (rows ``{"Param Counts", "Max Valid Scores", ...}``; computed from
  the scores, switch epochs and parameter counts as perforatedai does when absent), ``layer_names``
"""

from __future__ import annotations

import atexit
import csv
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from ._atomic import atomic_write

__all__ = ["OutputsWriteError", "RunOutputs", "best_arch_rows", "render_png", "write_csvs"]

FIGSIZE = (28, 14)  # inches; at DPI this is perforatedai's 2800x1400 PNG
DPI = 100
PALETTE = {
    "dendrite": "#00E0B5",
    "normal": "#FD4D00",
    "validation": "#59CD6C",
    "train": "#1A659E",
    "test": "#9781E6",
    "marker_best": "#000000",
    "marker_improved": "#6E6E6E",
    "learning_rate": "#1A659E",
    "grid": "#5B7B7A",
    "arch": "#00A5A5",
}
EXTRA_CYCLE = ["#9781E6", "#1A659E", "#00A5A5", "#F2B807"]

_ALIASES = {
    "validation_scores": "accuracies",
    "running_scores": "running_accuracies",
    "learning_rates": "training_learning_rates",
    "epoch_times": "n_epoch_times",
}
_SERIES = (
    "accuracies",
    "running_accuracies",
    "n_accuracies",
    "test_scores",
    "training_learning_rates",
    "n_epoch_times",
    "p_epoch_times",
    "n_train_times",
    "p_train_times",
    "n_val_times",
    "p_val_times",
)
_INT_SERIES = ("switch_epochs", "n_switch_epochs", "param_counts")


def is_rank0() -> bool:
    """Whether this process is rank 0 (or not distributed) by the ``RANK`` environment variable."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


class OutputsWriteError(RuntimeError):
    """Writing a graph or CSV failed in the background (raised by ``flush``; the message names the file)."""


# ---------------------------------------------------------------------------------------------------------------
# History snapshot (caller's thread: cheap, no I/O)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    item = getattr(v, "item", None)
    if callable(item):
        v = item()
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _nums(seq: Any) -> list[float | None]:
    if seq is None:
        return []
    tolist = getattr(seq, "tolist", None)  # tensors and arrays in one call
    if callable(tolist):
        seq = tolist()
    return [_num(v) for v in seq]


def _ints(seq: Any) -> list[int]:
    out = []
    for v in _nums(seq):
        if v is not None and math.isfinite(v):
            out.append(int(v))
    return out


def _score_dict(d: Any) -> dict[str, list[float | None]]:
    if not isinstance(d, Mapping):
        return {}
    return {str(k): _nums(v) for k, v in d.items()}


def snapshot(history: Mapping[str, Any]) -> dict[str, Any]:
    """A private, normalized copy of ``history`` (floats, ints and str only), safe to hand to another thread."""
    if not isinstance(history, Mapping):
        raise TypeError(f"history: expected a dict of plain data, got {type(history).__name__}")
    src = dict(history)
    for alias, name in _ALIASES.items():
        if alias in src and name not in src:
            src[name] = src[alias]
    h: dict[str, Any] = {name: _nums(src.get(name)) for name in _SERIES}
    for name in _INT_SERIES:
        h[name] = _ints(src.get(name))
    h["extra_scores"] = _score_dict(src.get("extra_scores"))
    h["extra_scores_without_graphing"] = _score_dict(src.get("extra_scores_without_graphing"))
    h["overwritten_vals"] = [_nums(v) for v in src.get("overwritten_vals") or []]
    h["overwritten_extras"] = [_score_dict(v) for v in src.get("overwritten_extras") or []]
    h["manual_train_switch"] = bool(src.get("manual_train_switch", False))
    h["maximizing_score"] = bool(src.get("maximizing_score", True))
    h["doing_pai"] = bool(src.get("doing_pai", True))
    h["mode"] = str(src.get("mode", "n"))
    eli = _num(src.get("epoch_last_improved"))
    h["epoch_last_improved"] = int(eli) if eli is not None and math.isfinite(eli) else None
    h["global_best_validation_score"] = _num(src.get("global_best_validation_score"))
    h["layer_names"] = [str(n) for n in src.get("layer_names") or []]
    rows = src.get("best_arch_scores")
    h["best_arch_scores"] = (
        [{str(k): (v if isinstance(v, str) else _num(v)) for k, v in row.items()} for row in rows]
        if rows is not None
        else None
    )
    if h["test_scores"]:
        graphed = list(h["extra_scores"].values()) + list(h["extra_scores_without_graphing"].values())
        if h["test_scores"] not in graphed:
            h["extra_scores"]["Test Scores"] = list(h["test_scores"])
    return h


# ---------------------------------------------------------------------------------------------------------------
# CSVs


def _argbest(values: list[float | None], maximizing: bool) -> int:
    best, best_i = None, 0
    for i, v in enumerate(values):
        if v is None or math.isnan(v):
            continue
        if best is None or (v > best if maximizing else v < best):
            best, best_i = v, i
    return best_i


def best_arch_rows(h: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per architecture (perforatedai ``generate_extra_csv_files``): the segment between successive
    neuron-phase switches and the current one; its best validation score, parameter count and extra scores."""
    if h.get("best_arch_scores") is not None:
        return [dict(r) for r in h["best_arch_scores"]]
    acc, se, pc = h["accuracies"], h["switch_epochs"], h["param_counts"]
    names = list(h["extra_scores"]) + [n for n in h["extra_scores_without_graphing"] if n not in h["extra_scores"]]

    def row(start: int, end: int | None, params: int | None) -> dict[str, Any] | None:
        seg = acc[start:end]
        if not seg:
            return None
        i = start + _argbest(seg, h["maximizing_score"])
        out: dict[str, Any] = {"Param Counts": params, "Max Valid Scores": acc[i]}
        for n in names:
            series = h["extra_scores"].get(n, h["extra_scores_without_graphing"].get(n, []))
            out[n] = series[i] if i < len(series) else None
        return out

    rows = []
    for k in range(0, len(se), 2):
        start = se[k - 1] + 1 if k else 0
        params = (pc[k] if k < len(pc) else None) if h["doing_pai"] else (pc[-1] if pc else None)
        r = row(start, se[k] + 1, params)
        if r is not None:
            rows.append(r)
    if h["mode"] == "n" and (not se or se[-1] + 1 != len(acc)):
        r = row(se[-1] + 1 if se else 0, None, pc[-1] if pc else None)
        if r is not None:
            rows.append(r)
    return rows


def _fmt(v: Any) -> str:
    # pandas' to_csv: missing and NaN are empty, floats print as str(float) ("84.0", "1e-05"), ints as ints.
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, int)):
        return str(int(v)) if isinstance(v, bool) else str(v)
    return str(float(v))


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV text like pandas ``to_csv(index=False)`` of the rows (a missing cell is empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def _stacked(blocks: list[tuple[str, list[float | None]]]) -> str:
    columns = ["Epochs"]
    for name, _ in blocks:
        if name not in columns:
            columns.append(name)
    rows = [{"Epochs": i, name: v} for name, values in blocks for i, v in enumerate(values)]
    return _table(columns, rows)


def csv_texts(h: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """File name -> CSV text of every CSV of spec §7.2 for the snapshot ``h``."""
    blocks = [("Validation Scores", h["accuracies"]), ("Validation Running Scores", h["running_accuracies"])]
    blocks += list(h["extra_scores"].items()) + list(h["extra_scores_without_graphing"].items())
    if h["manual_train_switch"]:
        times = [
            ("Normal Epoch Train Times", h["n_train_times"]),
            ("PAI Epoch Train Times", h["p_train_times"]),
            ("Normal Epoch Val Times", h["n_val_times"]),
            ("PAI Epoch Val Times", h["p_val_times"]),
        ]
    else:
        times = [("Normal Epoch Times", h["n_epoch_times"]), ("PAI Epoch Times", h["p_epoch_times"])]
    lr = [{"Epochs": i, "learning_rate": v} for i, v in enumerate(h["training_learning_rates"])]
    se = [{"Switch Number": i, "Switch Epoch": v} for i, v in enumerate(h["switch_epochs"])]
    pc = [{"Switch Number": i, "Param Count": v} for i, v in enumerate(h["param_counts"])]
    arch = best_arch_rows(h)
    arch_cols = ["Param Counts", "Max Valid Scores"]
    for r in arch:
        arch_cols += [c for c in r if c not in arch_cols]
    if not arch:
        arch_cols += list(h["extra_scores"]) + list(h["extra_scores_without_graphing"])
    out = {
        f"{prefix}Scores.csv": _stacked(blocks),
        f"{prefix}Times.csv": _stacked(times),
        f"{prefix}learning_rate.csv": _table(["Epochs", "learning_rate"], lr),
        f"{prefix}switch_epochs.csv": _table(["Switch Number", "Switch Epoch"], se),
        f"{prefix}param_counts.csv": _table(["Switch Number", "Param Count"], pc),
        f"{prefix}_best_arch_scores.csv": _table(arch_cols, arch),
    }
    if h["doing_pai"] and h["layer_names"]:
        cols = ["Epochs"]
        for n in h["layer_names"]:
            cols += [f"Best ever for all nodes Layer {n}", f"Best current for all nodes Layer {n}"]
        out[f"{prefix}Best PBScores.csv"] = _table(cols, [])
    return out


def write_csvs(h: Mapping[str, Any], save_dir: str, prefix: str) -> list[str]:
    """Write the CSVs of snapshot ``h`` atomically; returns their paths."""
    paths = []
    for name, text in csv_texts(h, prefix).items():
        path = os.path.join(save_dir, name)
        atomic_write(path, text, fsync=False)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# PNG


def _xs(values: list) -> list[int]:
    return list(range(len(values)))


def _plot(ax, values: list[float | None], **kw) -> None:
    ys = [math.nan if v is None else v for v in values]
    ax.plot(_xs(ys), ys, **kw)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color=PALETTE["grid"], alpha=0.25)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left")


def _extra_color(name: str, index: int) -> str:
    low = name.lower()
    if low == "train":
        return PALETTE["train"]
    if low in ("test", "test scores"):
        return PALETTE["test"]
    return EXTRA_CYCLE[index % len(EXTRA_CYCLE)]


def _finite_mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _scores_panel(ax, h: Mapping[str, Any], name: str, drawing_pai: bool) -> None:
    for i, vals in enumerate(h["overwritten_vals"]):
        extras = h["overwritten_extras"][i] if i < len(h["overwritten_extras"]) else {}
        for series in extras.values():
            _plot(ax, series, color=PALETTE["train"], alpha=0.35)
        _plot(ax, vals, color=PALETTE["validation"], alpha=0.35)
    acc = h["accuracies"] if drawing_pai or not h["n_accuracies"] else h["n_accuracies"]
    _plot(ax, acc, label="Validation Scores", color=PALETTE["validation"])
    _plot(ax, h["running_accuracies"], label="Validation Running Scores", color=PALETTE["validation"], alpha=0.4)
    for i, (n, series) in enumerate(h["extra_scores"].items()):
        _plot(ax, series, label=n, color=_extra_color(n, i))
    e = h["epoch_last_improved"]
    best = h["global_best_validation_score"]
    if e is not None and best is not None and acc:
        ax.plot([e], [best], "o", color=PALETTE["marker_best"], label="Global best (y)")
        if 0 <= e < len(acc) and acc[e] is not None:
            ax.plot([e], [acc[e]], "o", color=PALETTE["marker_improved"], label="Epoch Last Improved")
    se = h["switch_epochs"]
    if se and se[0] > 0:  # perforatedai's zooming_graph: floor/ceiling at the mean before the first switch
        lim = _finite_mean(acc[: se[0]])
        for series in h["extra_scores"].values():
            m = _finite_mean(series[: se[0]])
            if m is not None and lim is not None:
                lim = min(lim, m) if h["maximizing_score"] else max(lim, m)
        if lim is not None:
            if h["maximizing_score"]:
                ax.set_ylim(bottom=lim)
            else:
                ax.set_ylim(top=lim)
    if drawing_pai and h["doing_pai"]:
        # Switches alternate n->p (dendrites added: teal) and p->n (orange). In open source both happen at the
        # same epoch; perforatedai then draws orange over teal, here the addition stays visible.
        added = {x for i, x in enumerate(se) if i % 2 == 0}
        for x in sorted({x for i, x in enumerate(se) if i % 2 == 1} - added):
            ax.axvline(x=x, color=PALETTE["normal"])
        for k, x in enumerate(sorted(added)):
            ax.axvline(x=x, color=PALETTE["dendrite"], label="Dendrites added" if k == 0 else None)
    else:
        for x in h["n_switch_epochs"]:
            ax.axvline(x=x, color=PALETTE["normal"])
    _finish(ax, f"{name} Scores", "Epochs", "Score")


def _arch_panel(ax, h: Mapping[str, Any], name: str) -> None:
    rows = [r for r in best_arch_rows(h) if r.get("Param Counts") is not None and r.get("Max Valid Scores") is not None]
    xs = [r["Param Counts"] for r in rows]
    ys = [r["Max Valid Scores"] for r in rows]
    if rows:
        ax.plot(xs, ys, "o-", color=PALETTE["arch"], label="Best validation score")
        for k, (x, y) in enumerate(zip(xs, ys)):
            # Row k is the network after k dendrite additions (one dendrite per wrapped layer each).
            ax.annotate(f"{k} dendrite{'' if k == 1 else 's'}", (x, y), textcoords="offset points", xytext=(6, 6))
    _finish(ax, f"{name} Best score per architecture", "Parameter count", "Max validation score")


def _lr_panel(ax, h: Mapping[str, Any], name: str) -> None:
    _plot(ax, h["training_learning_rates"], label="learning_rate", color=PALETTE["learning_rate"])
    _finish(ax, f"{name} learning_rate", "Epochs", "learning_rate")


def _times_panel(ax, h: Mapping[str, Any], name: str) -> None:
    if h["manual_train_switch"]:
        _plot(ax, h["n_train_times"], label="Normal Epoch Train Times", color=PALETTE["normal"])
        _plot(ax, h["p_train_times"], label="PAI Epoch Train Times", color=PALETTE["dendrite"])
        _plot(ax, h["n_val_times"], label="Normal Epoch Val Times", color=PALETTE["normal"], alpha=0.45)
        _plot(ax, h["p_val_times"], label="PAI Epoch Val Times", color=PALETTE["dendrite"], alpha=0.45)
    else:
        _plot(ax, h["n_epoch_times"], label="Normal Epoch Times", color=PALETTE["normal"])
        _plot(ax, h["p_epoch_times"], label="PAI Epoch Times", color=PALETTE["dendrite"])
    ax.set_ylim(bottom=0)
    _finish(ax, f"{name} times (by train() and eval())", "Iteration", "Epoch Time in Seconds")


def render_png(
    h: Mapping[str, Any], path: str, *, title: str = "", drawing_pai: bool = True, drawing_extra_graphs: bool = True
) -> None:
    """Draw snapshot ``h`` (from ``snapshot``) into a 2800x1400 PNG at ``path``, atomically. No pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    _scores_panel(fig.add_subplot(2, 2, 1), h, title, drawing_pai)
    _arch_panel(fig.add_subplot(2, 2, 2), h, title)
    if drawing_extra_graphs:
        _lr_panel(fig.add_subplot(2, 2, 3), h, title)
        _times_panel(fig.add_subplot(2, 2, 4), h, title)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout complains about legends outside the axes
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(path, buf.getvalue(), fsync=False)


# ---------------------------------------------------------------------------------------------------------------
# Rendering in a child process

# The child imports this file as ``pai_fast.tracker_outputs`` under a bare package object: no pai_fast/__init__,
# so no torch (startup ~0.3 s). Requests and replies are length-prefixed pickles over pipes; the child's real
# stdout is kept for replies and fd 1 is pointed at stderr so that stray prints cannot corrupt the protocol.
_CHILD = """
import os, sys, types
package = types.ModuleType("pai_fast")
package.__path__ = [sys.argv[1]]
sys.modules["pai_fast"] = package
from pai_fast.tracker_outputs import _serve
_serve()
"""


def _read_exact(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _serve() -> None:
    """The child's loop: one ``render_png`` per request until stdin closes."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        header = _read_exact(requests, 8)
        if len(header) < 8:
            return
        h, path, kwargs = pickle.loads(_read_exact(requests, struct.unpack("<Q", header)[0]))
        try:
            render_png(h, path, **kwargs)
            reply = b""
        except Exception as exc:  # reported to the parent, which raises it from flush()
            reply = f"{type(exc).__name__}: {exc}".encode()
        replies.write(struct.pack("<Q", len(reply)) + reply)
        replies.flush()


class _RenderProcess:
    """A long-lived child that renders PNGs: matplotlib then never competes with training for the GIL."""

    def __init__(self) -> None:
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, here], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )

    def render(self, h: Mapping[str, Any], path: str, **kwargs: Any) -> None:
        data = pickle.dumps((dict(h), path, kwargs), protocol=4)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            header = _read_exact(self.proc.stdout, 8)
        except (BrokenPipeError, OSError) as exc:
            raise _RendererGone(f"the rendering process is gone ({exc})") from exc
        if len(header) < 8:
            raise _RendererGone(f"the rendering process exited with code {self.proc.poll()}")
        reply = _read_exact(self.proc.stdout, struct.unpack("<Q", header)[0])
        if reply:
            raise RuntimeError(reply.decode(errors="replace"))

    def close(self, timeout: float | None = None) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout)
        except Exception:
            self.proc.kill()


class _RendererGone(RuntimeError):
    pass


def _can_spawn() -> bool:
    return bool(sys.executable) and os.path.basename(sys.executable).startswith("python")


# ---------------------------------------------------------------------------------------------------------------
# Background writer


_live: weakref.WeakSet = weakref.WeakSet()


class RunOutputs:
    """Writes a run's PNG and CSVs under ``save_dir`` from a background thread (see the module docstring).

    Args:
        save_dir: the folder (created if missing); perforatedai uses ``./{save_name}/``.
        save_name: the file-name prefix.
        making_graphs: render the PNG (perforatedai's ``making_graphs``).
        writing_csvs: write the CSVs (default True; perforatedai writes none when ``making_graphs`` is False).
        drawing_pai, drawing_extra_graphs: perforatedai's ``drawing_pai`` / ``drawing_extra_graphs`` settings.
        background: False writes every file inside ``update`` (for debugging; slow with graphs on).
        max_busy_fraction: the live files (``extra == ""``) are re-rendered at most this fraction of the time:
            after a render of t seconds the next live render waits ``t * (1 / fraction - 1)`` (rendering holds
            the GIL much of the time and would slow the training thread). Snapshots, ``flush`` and ``close`` are
            never delayed.
        only_rank0: write nothing in processes whose ``RANK`` environment variable is not 0 (as perforatedai).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_name: str,
        making_graphs: bool = True,
        *,
        writing_csvs: bool = True,
        drawing_pai: bool = True,
        drawing_extra_graphs: bool = True,
        background: bool = True,
        only_rank0: bool = True,
        max_busy_fraction: float = 0.25,
        renderer: str = "process",
    ) -> None:
        if renderer not in ("process", "thread"):
            raise ValueError(f"renderer: expected 'process' or 'thread', got {renderer!r}")
        self.renderer = renderer
        if not 0 < max_busy_fraction <= 1:
            raise ValueError(f"max_busy_fraction: expected a value in (0, 1], got {max_busy_fraction}")
        self.max_busy_fraction = float(max_busy_fraction)
        if not isinstance(save_name, str):
            raise TypeError(f"save_name: expected a str, got {type(save_name).__name__}")
        self.save_dir = os.fspath(save_dir)
        self.save_name = save_name
        self.making_graphs = bool(making_graphs)
        self.writing_csvs = bool(writing_csvs)
        self.drawing_pai = bool(drawing_pai)
        self.drawing_extra_graphs = bool(drawing_extra_graphs)
        self.background = bool(background)
        self.enabled = not only_rank0 or is_rank0()
        self._init_state()
        _live.add(self)

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, Any]] = {}  # extra -> snapshot; insertion order = work order
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._errors: list[str] = []
        self._pid = os.getpid()
        self._proc: _RenderProcess | None = None  # started by the worker on its first PNG
        self._urgent = 0  # flush()/close() callers waiting: write everything now
        self._next_live = 0.0  # time.monotonic() before which the live files are not re-rendered

    # ------------------------------------------------------------------------------------------------ paths
    def png_path(self, extra: str = "") -> str:
        return os.path.join(self.save_dir, f"{self.save_name}{extra}.png")

    def csv_paths(self, extra: str = "") -> list[str]:
        names = ["Scores.csv", "Times.csv", "learning_rate.csv", "switch_epochs.csv", "param_counts.csv"]
        names.append("_best_arch_scores.csv")
        return [os.path.join(self.save_dir, f"{self.save_name}{extra}{n}") for n in names]

    # ------------------------------------------------------------------------------------------------ writing
    def _write(self, extra: str, h: dict[str, Any]) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        if self.writing_csvs:
            write_csvs(h, self.save_dir, self.save_name + extra)
        if self.making_graphs:
            kwargs = dict(
                title=f"{self.save_name}{extra}",
                drawing_pai=self.drawing_pai,
                drawing_extra_graphs=self.drawing_extra_graphs,
            )
            if self.background and self.renderer == "process" and _can_spawn():
                try:
                    if self._proc is None:
                        self._proc = _RenderProcess()
                    self._proc.render(h, self.png_path(extra), **kwargs)
                    return
                except (_RendererGone, OSError) as exc:
                    self.renderer = "thread"
                    self._proc = None
                    warnings.warn(f"pai_fast: graphs are rendered in-process from now on: {exc}", stacklevel=1)
            render_png(h, self.png_path(extra), **kwargs)

    def update(self, history: Mapping[str, Any], extra: str = "") -> None:
        """Queue the files for ``history`` (live files, or a snapshot with suffix ``extra``); returns at once."""
        if not isinstance(extra, str):
            raise TypeError(f"extra: expected a str suffix such as '_beforeSwitch_0', got {type(extra).__name__}")
        if not self.enabled or not (self.making_graphs or self.writing_csvs):
            return
        h = snapshot(history)
        if not self.background:
            self._write(extra, h)
            return
        self._check_fork()
        with self._cond:
            self._pending.pop(extra, None)  # latest wins; re-inserted at the end of the work order
            self._pending[extra] = h
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="pai_fast-run-outputs", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _ready(self) -> str | None:
        """The first queued suffix that may be written now (called with the lock held)."""
        hurry = self._urgent > 0 or self._stop or time.monotonic() >= self._next_live
        return next((extra for extra in self._pending if extra != "" or hurry), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._pending:
                        if self._stop:
                            return  # stopped and drained
                        self._cond.wait()
                        continue
                    extra = self._ready()
                    if extra is not None:
                        break
                    self._cond.wait(timeout=max(self._next_live - time.monotonic(), 0.001))
                h = self._pending.pop(extra)
                self._busy = True
            start = time.monotonic()
            try:
                self._write(extra, h)
            except Exception as exc:  # keep the worker alive; flush() reports it
                msg = f"{self.png_path(extra)} (or its CSVs): {type(exc).__name__}: {exc}"
                with self._cond:
                    first = not self._errors
                    self._errors.append(msg)
                if first:
                    warnings.warn(f"pai_fast: writing run outputs failed: {msg}", RuntimeWarning, stacklevel=1)
            finally:
                with self._cond:
                    self._busy = False
                    if extra == "" and self.making_graphs:
                        took = time.monotonic() - start
                        self._next_live = time.monotonic() + took * (1.0 / self.max_busy_fraction - 1.0)
                    self._cond.notify_all()

    def _check_fork(self) -> None:
        # A forked child has the object but not the thread (and maybe a lock held at fork time): start afresh.
        if self._pid != os.getpid():
            self._init_state()

    def pending(self) -> bool:
        """Whether files are queued or being written."""
        with self._cond:
            return bool(self._pending) or self._busy

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued file is written. Raises OutputsWriteError if a write failed since the last
        flush, TimeoutError after ``timeout`` seconds."""
        self._check_fork()
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: not self._pending and not self._busy, timeout=timeout)
            finally:
                self._urgent -= 1
            errors, self._errors = self._errors, []
        if not done:
            raise TimeoutError(f"RunOutputs.flush: files for {self.save_name!r} still pending after {timeout} s")
        if errors:
            raise OutputsWriteError("; ".join(errors))

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the worker thread (a later ``update`` starts a new one). Never raises for write errors:
        they are reported as a warning."""
        try:
            self.flush(timeout)
        except (OutputsWriteError, TimeoutError) as exc:
            warnings.warn(f"pai_fast: run outputs incomplete: {exc}", RuntimeWarning, stacklevel=2)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._proc is not None and (thread is None or not thread.is_alive()):
            self._proc.close(timeout)
            self._proc = None

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    # The worker is a daemon thread (it never blocks exit on its own); this makes sure its files are complete.
    for outputs in list(_live):
        if outputs._pid == os.getpid():
            outputs.close(timeout=120)


def _after_fork_in_child() -> None:
    for outputs in list(_live):
        outputs._init_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
