"""The two seed workflows, with only the imports changed, on sklearn's digits (no download).

Seed 0: the 5-step loop of the current API (GPA/UPA, set_optimizer_instance), as a capacity test (default
settings) and as a full run. Seed 1: the old camelCase workflow (PBG/PBM/PBU, setOptimizer/setScheduler/
setupOptimizer/addValidationScore, ``PBG.testingDendriteCapacity = False``) on a small CNN with Adadelta +
StepLR, which also runs the learning-rate sweep.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

datasets = pytest.importorskip("sklearn.datasets")

MAX_EPOCHS = 150


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


@pytest.fixture(autouse=True)
def _fresh_config(tmp_path):
    from pai_fast.tracker import pc

    old = os.getcwd()
    os.chdir(tmp_path)
    pc.reset()
    pc.set_silent(True)
    yield
    pc.reset()
    os.chdir(old)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, 1)
        self.conv2 = nn.Conv2d(6, 8, 3, 1)
        self.dropout = nn.Dropout(0.1)
        self.fc1 = nn.Linear(8 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = F.relu(self.conv2(x))
        x = self.dropout(torch.flatten(x, 1))
        return self.fc2(F.relu(self.fc1(x)))


def train(model, optimizer, data, batch=200):
    model.train()
    x, y = data
    for i in range(0, len(y), batch):
        optimizer.zero_grad()
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        optimizer.step()


@torch.no_grad()
def validate(model, data):
    model.eval()
    x, y = data
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def five_step_loop(train_data, val_data):
    """Seed 0's integration, verbatim apart from the imports."""
    from pai_fast.compat import globals_perforatedai as GPA
    from pai_fast.compat import utils_perforatedai as UPA

    torch.manual_seed(0)
    model = MLP()
    # 1. Wrap your model after initialization
    model = UPA.perforate_model(model)
    # 2. Register your optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    GPA.pai_tracker.set_optimizer_instance(optimizer)
    history = []
    # 3. Run until dendritic optimization completes
    for _ in range(MAX_EPOCHS):
        train(model, optimizer, train_data)
        val_score = validate(model, val_data)
        # 4. Report validation score and handle model restructuring
        model, restructured, training_complete = GPA.pai_tracker.add_validation_score(val_score, model)
        history.append((restructured, training_complete, GPA.pai_tracker.member_vars["num_dendrites_added"]))
        # 5. React to PAI's outcome
        if training_complete:
            break
        elif restructured:
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
            GPA.pai_tracker.set_optimizer_instance(optimizer)
    return model, history


def test_seed0_capacity_test(digits):
    """Default settings: three dendrites on the first three calls, then training_complete with (False, True)."""
    model, history = five_step_loop(*digits)
    assert [h[:2] for h in history] == [(1, False), (1, False), (1, False), (False, True)]
    assert model.fc1.num_dendrites == 3 and model.fc2.num_dendrites == 3
    assert validate(model, digits[1]) > 10  # still a working model


def test_seed0_full_run(digits):
    from pai_fast.compat import globals_perforatedai as GPA

    GPA.pc.set_testing_dendrite_capacity(False)
    GPA.pc.set_n_epochs_to_switch(3)
    GPA.pc.set_max_dendrites(2)
    model, history = five_step_loop(*digits)
    restructured, complete, _ = history[-1]
    assert complete is True and restructured is True
    assert max(h[2] for h in history) >= 1, "no dendrite was ever added"
    assert any(h[0] == 1 and type(h[0]) is int for h in history)
    tracker = GPA.pai_tracker
    # The model handed back is the best remembered state; its dendrite count is the tracker's.
    assert model.fc1.num_dendrites == tracker.member_vars["num_dendrites_added"] == model.fc2.num_dendrites
    assert validate(model, digits[1]) >= 0.99 * tracker.member_vars["global_best_validation_score"] or (
        tracker.member_vars["num_dendrites_added"] == 0
    )
    assert tracker.total_epochs_run == len(history) >= tracker.num_epochs_run
    assert os.path.exists("PAI/PAI_config.json")  # the run's config is kept for the record
    # perforatedai's files (spec §6.1, §7.2), complete when the training_complete call returns.
    names = ["PAI.png", "best_model.pt", "latest.pt", "switch_2.pt", "beforeSwitch_0.pt"]
    names += ["best_model_beforeSwitch_0.pt"]
    names += [f"PAI{c}.csv" for c in ("Scores", "Times", "learning_rate", "switch_epochs", "param_counts")]
    for name in names:
        assert os.path.getsize(os.path.join("PAI", name)) > 0, name
    with open("PAI/PAI.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import pai_fast

    fresh = pai_fast.perforate_model(MLP(), save_name="reload")
    info = pai_fast.load_checkpoint(fresh, "PAI/best_model.pt")
    assert info["dendrites"] == {"fc1": model.fc1.num_dendrites, "fc2": model.fc2.num_dendrites}
    x = digits[1][0][:32]
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def old_api_workflow(train_data, val_data, gamma=0.7):
    """Seed 1's camelCase workflow, verbatim apart from the imports."""
    from torch.optim.lr_scheduler import StepLR

    from pai_fast.compat import pb_globals as PBG
    from pai_fast.compat import pb_models as PBM  # noqa: F401 (imported by the seed, unused there too)
    from pai_fast.compat import pb_utils as PBU

    PBG.testingDendriteCapacity = False
    PBG.nEpochsToSwitch = 3
    PBG.maxDendrites = 2
    torch.manual_seed(0)
    model = CNN()
    model = PBU.initializePB(model)
    PBG.pbTracker.setOptimizer(torch.optim.Adadelta)
    PBG.pbTracker.setScheduler(StepLR)
    optimArgs = {"params": model.parameters(), "lr": 1.0}  # noqa: N806
    schedArgs = {"step_size": 1, "gamma": gamma}  # noqa: N806
    optimizer, scheduler = PBG.pbTracker.setupOptimizer(model, optimArgs, schedArgs)
    history = []
    for _ in range(MAX_EPOCHS):
        train(model, optimizer, train_data)
        score = validate(model, val_data)
        model, restructured, trainingComplete = PBG.pbTracker.addValidationScore(score, model)  # noqa: N806
        history.append(
            (
                restructured,
                trainingComplete,
                PBG.pbTracker.member_vars["num_dendrites_added"],
                optimizer.param_groups[0]["lr"],
            )
        )
        if trainingComplete:
            break
        if restructured:
            optimArgs = {"params": model.parameters(), "lr": 1.0}  # noqa: N806
            schedArgs = {"step_size": 1, "gamma": gamma}  # noqa: N806
            optimizer, scheduler = PBG.pbTracker.setupOptimizer(model, optimArgs, schedArgs)
    return model, history


def test_seed1_old_api(digits):
    from pai_fast.compat import pb_globals as PBG

    model, history = old_api_workflow(*digits)
    assert history[-1][1] is True, f"no training_complete within {MAX_EPOCHS} epochs"
    assert max(h[2] for h in history) >= 1
    # The tracker stepped the scheduler: the learning rate went down during the run.
    assert min(h[3] for h in history) < 1.0
    assert PBG.pbTracker.member_vars["switch_mode"] == PBG.doingHistory
    assert isinstance(model.conv1.num_dendrites, int) and model.conv1.num_dendrites == model.fc2.num_dendrites


def test_old_api_capacity_test(digits):
    """``PBG.testingDendriteCapacity`` left at its default: the capacity test runs on the CNN too."""
    from pai_fast.compat import pb_globals as PBG
    from pai_fast.compat import pb_utils as PBU

    torch.manual_seed(0)
    model = PBU.initializePB(CNN())
    PBG.pbTracker.setOptimizer(torch.optim.SGD)
    optimizer, _ = PBG.pbTracker.setupOptimizer(model, {"params": model.parameters(), "lr": 0.1})
    results = []
    for _ in range(10):
        train(model, optimizer, digits[0])
        model, restructured, complete = PBG.pbTracker.addValidationScore(validate(model, digits[1]), model)
        results.append((restructured, complete))
        if complete:
            break
        if restructured:
            optimizer, _ = PBG.pbTracker.setupOptimizer(model, {"params": model.parameters(), "lr": 0.1})
    assert results == [(1, False)] * 3 + [(False, True)]
    assert model.conv1.num_dendrites == 3
