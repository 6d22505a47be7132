"""The files a tracker run writes under ``./{save_name}/`` (perforatedai spec §6.1 and §7), installed by default.

=========================================  =====================================================================
``{save_name}.png`` and the CSVs           every ``add_validation_score`` (``save_graphs``), plus snapshots with
                                           a suffix (``_beforeSwitch_N``, ``_PBCount_...``); rendered on a
                                           background thread by :class:`pai_fast.tracker_outputs.RunOutputs`
``latest.pt``                              every ``add_validation_score`` (``pc.test_saves``, default True)
``best_model.pt``                          every new global best (and the first call)
``beforeSwitch_N.pt``, ``switch_N.pt``,    at switches and LR-sweep trials (``test_saves``), as perforatedai
``PBCount_D_startSteps_k.pt``
``best_model_beforeSwitch_N.pt``           a copy of ``best_model.pt`` before each switch
=========================================  =====================================================================

Checkpoints are pai_fast checkpoints (:func:`pai_fast.checkpoint.save_checkpoint`: safetensors with the dendrite
structure and the tracker state, written atomically), so ``load_system(model, save_name, "best_model")`` or
``pai_fast.load_checkpoint`` restores them. The tracker never reads these files back: the states it reverts to
are kept in memory, so a full or read-only disk costs the files (one warning), never the run.

Why the PNG is off the training thread: rendering a 2x2 matplotlib figure takes 0.3-1 s, which perforatedai pays
on every epoch. Here ``add_validation_score`` only queues a copy of the history; every queued file is on disk
when the run completes (``training_complete``), on ``flush()``, and at interpreter exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Any

from .outputs import TrackerOutputs

log = logging.getLogger("pai_fast.tracker")

# Written whatever test_saves says: these are the files users load afterwards.
_ALWAYS_SAVED = ("best_model",)


class FileOutputs(TrackerOutputs):
    """Writes a tracker's PNG, CSVs and checkpoints under ``{root}/{save_name}/``.

    Args:
        tracker: the tracker (its ``save_name``, ``making_graphs`` and ``pc`` settings are read on each call).
        root: the parent folder (default: the current working directory when the tracker is made, as
            perforatedai).
    """

    def __init__(self, tracker: Any, root: str | os.PathLike | None = None) -> None:
        self._root = os.path.abspath(os.fspath(root)) if root is not None else os.getcwd()
        self._runs: dict[str, Any] = {}  # save_name -> RunOutputs (a tracker may be renamed by initialize_pai)
        self._warned = False

    # ------------------------------------------------------------------------------------------------ helpers
    def folder(self, tracker: Any) -> str:
        return os.path.join(self._root, tracker.save_name)

    def _run(self, tracker: Any):
        from ..tracker_outputs import RunOutputs

        run = self._runs.get(tracker.save_name)
        if run is None:
            cfg = tracker.pc
            run = RunOutputs(
                self.folder(tracker),
                tracker.save_name,
                making_graphs=True,
                drawing_pai=bool(cfg.value("drawing_pai")),
                drawing_extra_graphs=bool(cfg.value("drawing_extra_graphs")),
            )
            self._runs[tracker.save_name] = run
        return run

    def _failed(self, what: str, exc: BaseException) -> None:
        # Files are a record, not state the tracker depends on: warn once, keep training.
        if not self._warned:
            self._warned = True
            warnings.warn(f"pai_fast tracker: could not write {what}: {type(exc).__name__}: {exc}", stacklevel=3)
        else:
            log.warning("could not write %s: %s", what, exc)

    def path(self, tracker: Any, name: str) -> str:
        return os.path.join(self.folder(tracker), f"{name}.pt")

    # ------------------------------------------------------------------------------------------------ hooks
    def on_graphs(self, tracker: Any, suffix: str = "") -> None:
        try:
            self._run(tracker).update(tracker.member_vars, suffix)
        except Exception as exc:  # pragma: no cover - defensive (bad history values)
            self._failed(f"graphs for {tracker.save_name!r}", exc)

    def on_save(self, tracker: Any, model: Any, name: str) -> None:
        if name not in _ALWAYS_SAVED and not tracker.pc.value("test_saves"):
            return
        from ..checkpoint import save_checkpoint

        target = self.path(tracker, name)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            save_checkpoint(model, target, tracker_state=tracker.to_dict(), extra_metadata={"name": name})
        except Exception as exc:
            self._failed(target, exc)

    def on_copy(self, tracker: Any, src: str, dst: str) -> None:
        from ..tracker_outputs import is_rank0

        if not is_rank0():
            return  # perforatedai copies on rank 0 only
        source, target = self.path(tracker, src), self.path(tracker, dst)
        if not os.path.exists(source):
            return
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except Exception as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self._failed(target, exc)

    def on_complete(self, tracker: Any, model: Any, reason: str) -> None:
        self.flush()

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued graph and CSV is on disk."""
        for run in list(self._runs.values()):
            try:
                run.flush(timeout)
            except Exception as exc:
                self._failed(f"graphs under {run.save_dir!r}", exc)


def file_outputs(tracker: Any) -> FileOutputs:
    """The default recorder factory (see :func:`pai_fast.tracker.set_default_outputs`)."""
    return FileOutputs(tracker)
