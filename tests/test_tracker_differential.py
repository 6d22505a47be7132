"""Differential test of the tracker against the real perforatedai 3.2.9 (the oracle).

Both trackers get the same score sequences (seeded random and adversarial: plateaus, exact ties, values on the
relative and raw improvement thresholds, zeros, integers, losses) on a tiny MLP trained one batch per epoch, with
the same knobs (maximizing/minimizing, capacity test on/off, n_epochs_to_switch, max_dendrites, tries,
retain_all_dendrites, history, switch modes, doing_pai=False, force_switch) and the same optimizer handling
(set_optimizer_instance; setup_optimizer with StepLR or ReduceLROnPlateau, which drives the LR sweep). At every
call they must return the same (type and value of restructured, training_complete), the same dendrite count in
every module, the same learning rate after the optimizer is rebuilt, and the same tracker history.

perforatedai runs in this process: its global state is reset for each case (new ``GPA.pc``, ``GPA.pai_tracker``
re-created by ``perforate_model``), in a fresh working directory because it writes checkpoints there.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    GPA = pytest.importorskip("perforatedai.globals_perforatedai")
    UPA = pytest.importorskip("perforatedai.utils_perforatedai")

from pai_fast.tracker import current_tracker, dendritic_modules, pc, perforate_model  # noqa: E402

# Tracker history compared after every call (perforatedai's member_vars names).
KEYS = [
    "mode",
    "num_dendrites_added",
    "num_dendrites_integrated",
    "num_cycles",
    "num_epochs_run",
    "total_epochs_run",
    "epoch_last_improved",
    "running_accuracy",
    "current_best_validation_score",
    "global_best_validation_score",
    "current_n_set_global_best",
    "num_dendrite_tries",
    "switch_epochs",
    "last_switch",
    "n_switch_epochs",
    "p_switch_epochs",
    "accuracies",
    "running_accuracies",
    "n_accuracies",
    "last_improved_accuracies",
    "overwritten_epochs",
    "training_learning_rates",
    "current_n_learning_rate_initial_skip_steps",
    "last_max_learning_rate_steps",
    "last_max_learning_rate_value",
    "current_cycle_lr_max_scores",
    "current_step_count",
    "committed_to_initial_rate",
    "initial_lr_test_epoch_count",
    "extra_scores",
    "test_scores",
]


@dataclass
class Case:
    name: str
    scores: list
    maximizing: bool = True
    knobs: dict = field(default_factory=dict)
    opt: str = "instance"  # instance | step | plateau
    doing_pai: bool = True
    force_at: frozenset = frozenset()
    extra: bool = False  # also add_extra_score / add_test_score each epoch


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


class _Driver:
    """Runs one case on one implementation; subclasses bind the API."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.model = None
        self.opt = None

    def build_optimizer(self):
        c = self.case
        t = self.tracker()
        if c.opt == "instance":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            t.set_optimizer_instance(self.opt)
            return
        if c.opt == "step":
            sched_args = {"step_size": 2, "gamma": 0.5}
        else:
            sched_args = {"mode": "max" if c.maximizing else "min", "patience": 1, "factor": 0.5}
        self.opt, _ = t.setup_optimizer(self.model, {"params": self.model.parameters(), "lr": 0.05}, sched_args)

    def start(self) -> None:
        c = self.case
        self.setup_config({"testing_dendrite_capacity": False, **c.knobs})
        self.model = self.perforate(_model())
        t = self.tracker()
        if c.opt != "instance":
            t.set_optimizer(torch.optim.SGD)
            t.set_scheduler(
                torch.optim.lr_scheduler.StepLR if c.opt == "step" else torch.optim.lr_scheduler.ReduceLROnPlateau
            )
        self.build_optimizer()

    def run(self) -> list:
        self.start()
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        trace = []
        for i, score in enumerate(self.case.scores):
            self.opt.zero_grad()
            self.model(x).pow(2).mean().backward()
            self.opt.step()
            if self.case.extra:
                self.tracker().add_extra_score(score * 0.5, "Train")
                self.tracker().add_test_score(score * 0.25, "Test")
            with contextlib.redirect_stdout(io.StringIO()):
                model, restructured, complete = self.tracker().add_validation_score(
                    score, self.model, i in self.case.force_at
                )
            assert model is self.model
            mv = self.tracker().member_vars
            step = {
                "restructured": (type(restructured).__name__, restructured),
                "complete": complete,
                "dendrites": self.dendrites(),
                "vars": {k: mv[k] for k in KEYS},
            }
            if complete:
                trace.append(step)
                break
            if restructured:
                self.build_optimizer()
                step["lr_after_rebuild"] = [g["lr"] for g in self.opt.param_groups]
            trace.append(step)
        return trace


class _Oracle(_Driver):
    def setup_config(self, knobs: dict) -> None:
        GPA.pc = GPA.PAIConfig()
        GPA.pai_tracker = []
        base = {"configuration_confirmed": True, "unwrapped_modules_confirmed": True, "silent": True}
        for k, v in {**base, **knobs}.items():
            getattr(GPA.pc, f"set_{k}")(v)

    def perforate(self, model):
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return UPA.perforate_model(
                model,
                doing_pai=self.case.doing_pai,
                save_name="PAI",
                making_graphs=False,
                maximizing_score=self.case.maximizing,
            )

    def tracker(self):
        return GPA.pai_tracker

    def dendrites(self):
        return [len(m.dendrite_module.layers) for m in UPA.get_pai_modules(self.model, 0)]


class _Ours(_Driver):
    def setup_config(self, knobs: dict) -> None:
        pc.reset()
        pc.set_silent(True)
        for k, v in knobs.items():
            getattr(pc, f"set_{k}")(v)

    def perforate(self, model):
        return perforate_model(
            model,
            doing_pai=self.case.doing_pai,
            save_name="PAI",
            making_graphs=False,
            maximizing_score=self.case.maximizing,
        )

    def tracker(self):
        return current_tracker()

    def dendrites(self):
        return [m.num_dendrites for _, m in dendritic_modules(self.model)]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b and (type(a) is bool) == (type(b) is bool)


def _run_both(case: Case, tmp_path) -> tuple[list, list]:
    old = os.getcwd()
    try:
        (tmp_path / "oracle").mkdir()
        os.chdir(tmp_path / "oracle")
        expected = _Oracle(case).run()
        (tmp_path / "ours").mkdir()
        os.chdir(tmp_path / "ours")
        got = _Ours(case).run()
    finally:
        os.chdir(old)
        pc.reset()
    return expected, got


def check_case(case: Case, tmp_path) -> list:
    expected, got = _run_both(case, tmp_path)
    for i, (e, g) in enumerate(zip(expected, got)):
        for key in ("restructured", "complete", "dendrites", "lr_after_rebuild"):
            assert _same(e.get(key), g.get(key)), (
                f"{case.name}: call {i} (score {case.scores[i]!r}): {key} perforatedai={e.get(key)!r} "
                f"pai_fast={g.get(key)!r}"
            )
        for key in KEYS:
            assert _same(e["vars"][key], g["vars"][key]), (
                f"{case.name}: call {i}: member_vars[{key!r}] perforatedai={e['vars'][key]!r} "
                f"pai_fast={g['vars'][key]!r}"
            )
    assert len(expected) == len(got), f"{case.name}: {len(expected)} calls in perforatedai, {len(got)} in pai_fast"
    return expected


# --------------------------------------------------------------------------------------------- sequences
def _scores(kind: str, rng: random.Random, n: int, maximizing: bool) -> list:
    if kind == "plateau":  # rises, stalls, rises again, with noise and repeats
        s, out = 50.0, []
        for _ in range(n):
            if rng.random() < 0.35:
                s += rng.uniform(0, 3)
            out.append(round(s + rng.choice([0, 0, 0, rng.uniform(-1, 0.5)]), 2))
    elif kind == "random":
        out = [rng.uniform(0, 100) for _ in range(n)]
    elif kind == "const":
        out = [42.0] * n
    elif kind == "threshold":  # candidates exactly on / around the relative and raw thresholds
        s, out = 80.0, []
        for _ in range(n):
            t = rng.choice([0.001, 0.0001, 0.0])
            cand = [
                s * (1 + t),
                s / (1 - t) if t else s,
                s + 1e-5,
                s + 2e-5,
                s * (1 + t) + 1e-5,
                s,
                s - 1e-9,
                s * (1 + t) + 1.1e-5,
                s + 0.5,
            ]
            v = rng.choice(cand)
            out.append(v)
            if rng.random() < 0.3:
                s = v
    elif kind == "zeros":
        out = [rng.choice([0.0, 0.0, rng.uniform(0, 10), 5.0]) for _ in range(n)]
    elif kind == "int":
        s, out = 10, []
        for _ in range(n):
            s += rng.choice([0, 0, 1])
            out.append(s + rng.choice([0, 0, -1]))
    elif kind == "stairs":
        step = rng.randint(2, 6)
        out = [10.0 + (i // step) * rng.choice([0.5, 1.0]) for i in range(n)]
    else:  # pragma: no cover
        raise ValueError(kind)
    if not maximizing:  # losses: lower is better, positive
        out = [(100.0 - v) / 10.0 if isinstance(v, float) else 100 - v for v in out]
    return out


KINDS = ["plateau", "random", "const", "threshold", "zeros", "int", "stairs"]


def random_case(seed: int, length: int = 60) -> Case:
    rng = random.Random(seed)
    maximizing = rng.random() < 0.6
    kind = KINDS[seed % len(KINDS)]
    knobs = {
        "n_epochs_to_switch": rng.choice([1, 2, 3, 4]),
        "max_dendrites": rng.choice([1, 2, 3, 100]),
        "max_dendrite_tries": rng.choice([1, 2, 2, 3]),
        "retain_all_dendrites": rng.random() < 0.2,
    }
    if rng.random() < 0.3:
        knobs["history_lookback"] = rng.choice([2, 3])
    if rng.random() < 0.2:
        knobs["initial_history_after_switches"] = rng.choice([1, 2])
    if rng.random() < 0.15:
        knobs["reset_best_score_on_switch"] = False
    if rng.random() < 0.15:
        knobs["find_best_lr"] = False
    if rng.random() < 0.15:
        knobs["improvement_threshold"] = rng.choice([0.01, [0.0], [0.01, 0.001]])
    if rng.random() < 0.1:
        knobs["param_vals_setting"] = 0
    r = rng.random()
    if r < 0.07:
        knobs.update(switch_mode=2, fixed_switch_num=rng.choice([3, 5]), first_fixed_switch_num=rng.choice([-1, 6]))
    elif r < 0.11:
        knobs["switch_mode"] = 3
    elif r < 0.14:
        knobs["switch_mode"] = 0
    if rng.random() < 0.12:
        knobs["testing_dendrite_capacity"] = True
    opt = rng.choice(["instance", "step", "plateau"])
    force = frozenset(i for i in range(length) if rng.random() < 0.03)
    return Case(
        name=f"seed{seed}-{kind}-{'max' if maximizing else 'min'}-{opt}",
        scores=_scores(kind, rng, length, maximizing),
        maximizing=maximizing,
        knobs=knobs,
        opt=opt,
        doing_pai=rng.random() > 0.08,
        force_at=force,
        extra=rng.random() < 0.3,
    )


# ----------------------------------------------------------------------------------------------- tests
def test_capacity_mode_default(tmp_path):
    """Defaults: the capacity test adds a dendrite on each of the first 3 calls, then (False, True)."""
    case = Case("capacity", [float(i) for i in range(10)], knobs={"testing_dendrite_capacity": True})
    trace = check_case(case, tmp_path)
    assert [s["restructured"] for s in trace] == [("int", 1)] * 3 + [("bool", False)]
    assert trace[-1]["complete"] is True and trace[-1]["dendrites"] == [3, 3]


def test_spec_trace_e2(tmp_path):
    """Spec §5.5: revert to best, a dendrite that helps, one that does not, a retry, completion with 1 dendrite."""
    scores = [47.7, 64.1, 82.0, 80.1, 84.4, 83.6, 84.0, 84.4, 84.4, 84.77, 84.77, 84.77, 84.77, 84.77] + [84.77] * 12
    case = Case("e2", scores, knobs={"n_epochs_to_switch": 4, "max_dendrites": 3})
    trace = check_case(case, tmp_path)
    assert trace[-1]["complete"] is True and trace[-1]["restructured"] == ("bool", True)
    assert trace[-1]["dendrites"] == [1, 1]
    assert any(s["restructured"] == ("int", 1) for s in trace)


@pytest.mark.parametrize("opt", ["step", "plateau"])
@pytest.mark.parametrize("maximizing", [True, False])
def test_lr_sweep(tmp_path, opt, maximizing):
    """setup_optimizer + scheduler: the LR sweep after each addition (reloads without a new dendrite)."""
    rng = random.Random(7)
    scores = _scores("plateau", rng, 80, maximizing)
    case = Case(
        f"sweep-{opt}", scores, maximizing=maximizing, knobs={"n_epochs_to_switch": 3, "max_dendrites": 4}, opt=opt
    )
    check_case(case, tmp_path)


def test_lr_sweep_reloads_happen(tmp_path):
    """A StepLR run whose sweep restarts and then picks the earlier trial (spec §5.7, [EXP] e2_step)."""
    scores = [
        50,
        60,
        70,
        75,
        78,
        80,
        80,
        80,
        80,
        80,
        81,
        82,
        83,
        84,
        85,
        85.5,
        85.5,
        85.5,
        85.5,
        85.5,
        84,
        84,
        84,
        84.4,
        84.4,
        84.4,
        84.4,
        84.4,
        84.4,
    ] + [84.4] * 20
    case = Case(
        "sweep-e2_step", [float(s) for s in scores], knobs={"n_epochs_to_switch": 4, "max_dendrites": 3}, opt="step"
    )
    trace = check_case(case, tmp_path)
    adds = [s for s in trace if s["restructured"][1]]
    assert len(adds) >= 2


@pytest.mark.parametrize("seed", range(70))
def test_random_sequences(tmp_path, seed):
    check_case(random_case(seed), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(70, 470))
def test_random_sequences_long(tmp_path, seed):
    check_case(random_case(seed, length=150), tmp_path)
