"""Run outputs: perforatedai's CSV names/columns, the 2800x1400 PNG, off-thread rendering, flush/close."""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pai_fast
from pai_fast import tracker_outputs as to
from pai_fast.tracker_outputs import OutputsWriteError, RunOutputs, best_arch_rows, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pai_fast.__file__)))


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def read_csv(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def history(n: int = 12) -> dict:
    """A run with two dendrite additions (open source: two switch entries at the same epoch) and a revert."""
    acc = [0.5 + 0.03 * i - (0.02 if i % 3 == 0 else 0.0) for i in range(n)]
    return {
        "accuracies": acc,
        "running_accuracies": [a - 0.01 for a in acc],
        "extra_scores": {"Train": [a + 0.05 for a in acc], "Test": [a - 0.05 for a in acc[:-1]]},
        "extra_scores_without_graphing": {"Val loss": [1.0 - a for a in acc]},
        "test_scores": [a - 0.05 for a in acc[:-1]],  # as add_test_score: also in extra_scores
        "training_learning_rates": [0.1] * 5 + [0.05] * (n - 5),
        "n_epoch_times": [1.0 + 0.1 * i for i in range(n)],
        "p_epoch_times": [],
        "switch_epochs": [4, 4, 8, 8],
        "param_counts": [22, 50, 50, 96, 96],
        "overwritten_vals": [[0.4, 0.45, 0.5]],
        "overwritten_extras": [{"Train": [0.5, 0.55, 0.6]}],
        "epoch_last_improved": n - 2,
        "global_best_validation_score": acc[n - 2],
        "mode": "n",
    }


def test_files_and_columns_after_flush(tmp_path):
    h = history()
    with RunOutputs(tmp_path, "PAI") as out:
        out.update(h)
        out.flush()
        assert png_size(tmp_path / "PAI.png") == (2800, 1400)
        cols, rows = read_csv(tmp_path / "PAIScores.csv")
        assert cols == ["Epochs", "Validation Scores", "Validation Running Scores", "Train", "Test", "Val loss"]
        assert len(rows) == 12 + 12 + 12 + 11 + 12  # stacked blocks, one per series
        assert rows[0] == ["0", str(h["accuracies"][0]), "", "", "", ""]
        assert rows[12] == ["0", "", str(h["running_accuracies"][0]), "", "", ""]
        assert read_csv(tmp_path / "PAITimes.csv")[0] == ["Epochs", "Normal Epoch Times", "PAI Epoch Times"]
        cols, rows = read_csv(tmp_path / "PAIlearning_rate.csv")
        assert cols == ["Epochs", "learning_rate"] and rows[-1] == ["11", "0.05"]
        cols, rows = read_csv(tmp_path / "PAIswitch_epochs.csv")
        assert cols == ["Switch Number", "Switch Epoch"] and rows == [["0", "4"], ["1", "4"], ["2", "8"], ["3", "8"]]
        cols, rows = read_csv(tmp_path / "PAIparam_counts.csv")
        assert cols == ["Switch Number", "Param Count"] and [r[1] for r in rows] == ["22", "50", "50", "96", "96"]
        cols, rows = read_csv(tmp_path / "PAI_best_arch_scores.csv")
        assert cols == ["Param Counts", "Max Valid Scores", "Train", "Test", "Val loss"]
        assert [r[0] for r in rows] == ["22", "50", "96"]  # one row per architecture
        # segment 0 = epochs 0..4 (best: 4), segment 1 = 5..8 (best: 8), current = 9..11 (best: 11, no Test there)
        assert rows[0][1] == str(h["accuracies"][4]) and rows[1][1] == str(h["accuracies"][8])
        assert rows[2][1] == str(h["accuracies"][11]) and rows[2][3] == ""
        assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_csvs_match_perforatedai_bytes(tmp_path):
    """Files perforatedai 3.2.9 wrote for a 2-epoch run with one dendrite addition (captured from a real run)."""
    h = {
        "accuracies": [0.5, 0.6],
        "running_accuracies": [0.5, 0.6],
        "training_learning_rates": [0.1, 0.1],
        "n_epoch_times": [1.353236436843872, 0.7751052379608154],
        "switch_epochs": [1, 1],
        "param_counts": [44, 96, 96],
        "layer_names": [".fc1", ".fc2"],
        "mode": "n",
    }
    expected = {
        "PAIScores.csv": "Epochs,Validation Scores,Validation Running Scores\n0,0.5,\n1,0.6,\n0,,0.5\n1,,0.6\n",
        "PAITimes.csv": "Epochs,Normal Epoch Times,PAI Epoch Times\n0,1.353236436843872,\n1,0.7751052379608154,\n",
        "PAIlearning_rate.csv": "Epochs,learning_rate\n0,0.1\n1,0.1\n",
        "PAIswitch_epochs.csv": "Switch Number,Switch Epoch\n0,1\n1,1\n",
        "PAIparam_counts.csv": "Switch Number,Param Count\n0,44\n1,96\n2,96\n",
        "PAI_best_arch_scores.csv": "Param Counts,Max Valid Scores\n44,0.6\n",
        "PAIBest PBScores.csv": "Epochs,Best ever for all nodes Layer .fc1,Best current for all nodes Layer .fc1,"
        "Best ever for all nodes Layer .fc2,Best current for all nodes Layer .fc2\n",
    }
    out = RunOutputs(tmp_path, "PAI", making_graphs=False)
    out.update(h)
    out.close()
    assert sorted(os.listdir(tmp_path)) == sorted(expected)  # no PNG with making_graphs=False
    for name, text in expected.items():
        assert (tmp_path / name).read_text() == text, name


def test_rendering_happens_off_the_calling_thread(tmp_path, monkeypatch):
    release = threading.Event()
    threads = []
    real = to.render_png

    def slow_render(*args, **kwargs):
        threads.append(threading.get_ident())
        assert release.wait(60)
        real(*args, **kwargs)

    monkeypatch.setattr(to, "render_png", slow_render)
    out = RunOutputs(tmp_path, "run", renderer="thread")
    out.update(history())
    # update returned although the renderer is still blocked: the PNG cannot exist yet
    assert out.pending()
    assert not (tmp_path / "run.png").exists()
    release.set()
    out.flush()
    assert png_size(tmp_path / "run.png") == (2800, 1400)
    assert threads and threading.get_ident() not in threads
    assert not out.pending()
    out.close()


def test_latest_wins_and_snapshots_are_kept(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    drawn = []

    def fake_render(h, path, **kwargs):
        drawn.append((os.path.basename(path), len(h["accuracies"])))
        started.set()
        assert release.wait(60)
        with open(path, "wb") as f:
            f.write(b"png")

    monkeypatch.setattr(to, "render_png", fake_render)
    out = RunOutputs(tmp_path, "run", renderer="thread")
    h = history(12)
    out.update(h)
    assert started.wait(60)  # the worker is busy with the first live figure
    for n in range(3, 9):
        out.update({**h, "accuracies": h["accuracies"][:n]})
    out.update(h, extra="_beforeSwitch_0")
    out.update({**h, "accuracies": h["accuracies"][:2]})  # newest live state
    release.set()
    out.flush()
    assert drawn == [("run.png", 12), ("run_beforeSwitch_0.png", 12), ("run.png", 2)]
    _, rows = read_csv(tmp_path / "runScores.csv")
    assert sum(1 for r in rows if r[1]) == 2  # the live CSV holds the newest history
    assert (tmp_path / "run_beforeSwitch_0Scores.csv").exists()
    out.close()


def test_update_copies_the_history(tmp_path):
    h = history()
    out = RunOutputs(tmp_path, "run", making_graphs=False)
    out.update(h)
    h["accuracies"].append(99.0)  # the tracker keeps appending to its own lists
    h["extra_scores"]["Train"].clear()
    out.flush()
    _, rows = read_csv(tmp_path / "runScores.csv")
    assert sum(1 for r in rows if r[1]) == 12 and sum(1 for r in rows if r[3]) == 12


def test_readers_never_see_a_partial_png(tmp_path):
    out = RunOutputs(tmp_path, "run")
    out.update(history())
    out.flush()
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            data = (tmp_path / "run.png").read_bytes()
            if not (data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in (6, 12):
            out.update(history(n))
            out.flush()
    finally:
        stop.set()
        t.join()
    assert bad == []
    out.close()


def test_write_errors_surface_in_flush_and_warn_in_close(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = RunOutputs(blocker, "run", making_graphs=False)
    with pytest.warns(RuntimeWarning, match="writing run outputs failed"):
        out.update(history())
        with pytest.raises(OutputsWriteError, match="not_a_dir"):
            out.flush()
    out.flush()  # reported once
    with pytest.warns(RuntimeWarning) as record:
        out.update(history())
        out.close()
    assert any("incomplete" in str(w.message) for w in record)


def test_close_at_interpreter_exit_completes_the_files(tmp_path):
    script = textwrap.dedent(
        f"""
        from pai_fast.tracker_outputs import RunOutputs
        out = RunOutputs({str(tmp_path)!r}, "exit")
        out.update({{"accuracies": [0.1, 0.2, 0.3], "running_accuracies": [0.1, 0.15, 0.2]}})
        # no flush, no close: the atexit hook must finish the PNG and the CSVs
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png_size(tmp_path / "exit.png") == (2800, 1400)
    assert (tmp_path / "exit_best_arch_scores.csv").read_text() == "Param Counts,Max Valid Scores\n,0.3\n"


def test_nonzero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    out = RunOutputs(tmp_path / "r1", "run")
    out.update(history())
    out.close()
    assert not (tmp_path / "r1").exists()


def test_best_arch_rows_follow_perforatedai():
    # spec §5.5 trace: switch at epoch 4 (reverted to tracker epoch 4), one dendrite, minimizing variant too
    h = snapshot(
        {
            "accuracies": [47.7, 64.1, 82.0, 80.1, 84.4, 84.77, 84.5],
            "switch_epochs": [4, 4],
            "param_counts": [22, 50, 50],
        }
    )
    assert best_arch_rows(h) == [
        {"Param Counts": 22, "Max Valid Scores": 84.4},
        {"Param Counts": 50, "Max Valid Scores": 84.77},
    ]
    h = snapshot(
        {
            "accuracies": [3.0, 2.0, 2.5, 1.0],
            "switch_epochs": [1, 1],
            "param_counts": [5, 9, 9],
            "maximizing_score": False,
        }
    )
    assert [r["Max Valid Scores"] for r in best_arch_rows(h)] == [2.0, 1.0]
    # right after a switch (no epoch of the new architecture yet) there is no row for it
    h = snapshot({"accuracies": [1.0, 2.0], "switch_epochs": [1, 1], "param_counts": [5, 9, 9]})
    assert best_arch_rows(h) == [{"Param Counts": 5, "Max Valid Scores": 2.0}]


def test_snapshot_accepts_tensors_numpy_and_aliases():
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    h = snapshot(
        {
            "validation_scores": torch.tensor([0.5, 0.25]),
            "learning_rates": np.array([0.1, 0.2]),
            "running_scores": [torch.tensor(0.5), np.float32(0.25)],
            "switch_epochs": (3.0,),
        }
    )
    assert h["accuracies"] == [0.5, 0.25] and h["training_learning_rates"] == [0.1, 0.2]
    assert h["running_accuracies"] == [0.5, 0.25] and h["switch_epochs"] == [3]
    with pytest.raises(TypeError, match="history"):
        snapshot([1, 2])
    with pytest.raises(TypeError, match="extra"):
        RunOutputs("x", "y").update({}, extra=3)


def test_png_rendered_in_a_child_process_without_torch(tmp_path):
    out = RunOutputs(tmp_path, "run")  # renderer="process" is the default
    out.update(history())
    out.flush()
    assert png_size(tmp_path / "run.png") == (2800, 1400)
    proc = out._proc.proc
    assert proc.poll() is None  # the child stays up for the next figure
    child_modules = open(f"/proc/{proc.pid}/maps").read()
    assert "libtorch" not in child_modules  # the child imports tracker_outputs without pai_fast/__init__ (torch)
    out.update(history(5), extra="_snap")
    out.close()
    assert png_size(tmp_path / "run_snap.png") == (2800, 1400)
    assert proc.poll() == 0  # closed cleanly with the outputs


def test_renderer_process_death_falls_back_to_the_thread(tmp_path):
    out = RunOutputs(tmp_path, "run")
    out.update(history())
    out.flush()
    out._proc.proc.kill()
    out._proc.proc.wait()
    (tmp_path / "run.png").unlink()
    with pytest.warns(UserWarning, match="rendered in-process"):
        out.update(history(7))
        out.flush()
    assert out.renderer == "thread" and png_size(tmp_path / "run.png") == (2800, 1400)
    out.close()


def test_live_graph_rendering_is_throttled_but_flush_is_not(tmp_path, monkeypatch):
    drawn = []

    def fake_render(h, path, **kwargs):
        drawn.append(len(h["accuracies"]))
        time.sleep(0.05)
        with open(path, "wb") as f:
            f.write(b"png")

    monkeypatch.setattr(to, "render_png", fake_render)
    out = RunOutputs(tmp_path, "run", renderer="thread", max_busy_fraction=0.05)  # wait 19x the render time
    h = history(12)
    for n in range(1, 13):
        out.update({**h, "accuracies": h["accuracies"][:n]})
        time.sleep(0.02)
    assert len(drawn) <= 2  # rendered once, then held back (0.05 s render -> ~0.95 s pause)
    out.flush()
    assert drawn[-1] == 12  # flush writes the newest state at once
    out.close()
