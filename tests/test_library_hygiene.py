"""Library code never stops the user's process or talks on stdout: no pdb/breakpoint/input/sys.exit/exit/quit
anywhere under pai_fast/, and print only in the command-line entry points (spec §9: perforatedai does all of these).
Config knobs: unknown and legacy names warn; a previous run's JSON config is never read back silently."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from torch import nn

import pai_fast

PKG = Path(pai_fast.__file__).parent
CLI_MODULES = {"cli.py", "demo.py", "bench.py", "__main__.py"}  # they print their results
CLI_FUNCTIONS = {"main", "doctor"}


def _calls(tree: ast.AST):
    """(call name, enclosing function names) for every call in the module."""
    out = []

    def visit(node, funcs):
        for child in ast.iter_child_nodes(node):
            inner = funcs + [child.name] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else funcs
            if isinstance(child, ast.Call):
                f = child.func
                name = f.id if isinstance(f, ast.Name) else (ast.unparse(f) if isinstance(f, ast.Attribute) else "")
                out.append((name, funcs))
            visit(child, inner)

    visit(tree, [])
    return out


def test_no_debugger_exit_or_stdout_in_library_code():
    forbidden = {"breakpoint", "input", "exit", "quit", "sys.exit", "pdb.set_trace", "os._exit"}
    bad = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        src = path.read_text()
        assert "import pdb" not in src, f"{path}: imports pdb"
        for name, funcs in _calls(ast.parse(src)):
            if name in forbidden:
                bad.append(f"{path.relative_to(PKG)}: {name}()")
            if name == "print" and path.name not in CLI_MODULES and not set(funcs) & CLI_FUNCTIONS:
                bad.append(f"{path.relative_to(PKG)}: print() in {'.'.join(funcs) or 'module scope'}")
    assert not bad, bad


def test_unknown_and_legacy_knobs_warn(monkeypatch):
    from pai_fast.tracker import PAIConfigWarning, pc

    pc.reset()
    try:
        with pytest.warns(PAIConfigWarning, match="'not_a_knob' does not exist"):
            pc.set_not_a_knob(3)
        with pytest.warns(PAIConfigWarning, match="'drawing_pb' is an old name"):
            pc.set_drawing_pb(False)
        assert pc.get_drawing_pai() is False
    finally:
        pc.reset()


def test_a_previous_runs_config_json_is_not_reused(tmp_path, monkeypatch):
    from pai_fast.tracker import pc

    monkeypatch.chdir(tmp_path)
    pc.reset()
    try:
        pc.set_testing_dendrite_capacity(False)
        pc.set_n_epochs_to_switch(7)
        pai_fast.perforate_model(nn.Sequential(nn.Linear(3, 2)), save_name="run")
        path = tmp_path / "run" / "run_config.json"
        saved = json.loads(path.read_text())  # written for the record
        assert saved["n_epochs_to_switch"] == 7
        saved["n_epochs_to_switch"] = 99
        path.write_text(json.dumps(saved))
        kept = tmp_path / "edited_config.json"
        kept.write_text(json.dumps(saved))
        pc.reset()
        pc.set_testing_dendrite_capacity(False)
        pai_fast.perforate_model(nn.Sequential(nn.Linear(3, 2)), save_name="run")
        assert pc.get_n_epochs_to_switch() == 10  # the default, not the file's 99
        assert json.loads(path.read_text())["n_epochs_to_switch"] == 10  # the new run's own record replaced it
        pc.reset()
        pai_fast.perforate_model(nn.Sequential(nn.Linear(3, 2)), save_name="run2", config_file=str(kept))
        assert pc.get_n_epochs_to_switch() == 99  # read only when asked for
    finally:
        pc.reset()
