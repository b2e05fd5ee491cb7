"""The package's layout: old import paths keep working (the same module, with a warning naming the new
home), and lower layers never import upper ones (data flows one way: entry points -> loop -> scheduling
-> engines; loop -> sandbox)."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

from rlm_local._moved import MOVED

PACKAGE = Path(__file__).resolve().parents[1] / "rlm_local"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_give_the_moved_module_with_a_warning(old):
    new = importlib.import_module(MOVED[old])
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is new
    assert any(MOVED[old] in str(w.message) and w.category is DeprecationWarning for w in caught)


def test_from_old_path_import_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from rlm_local.scheduler import Scheduler
        from rlm_local.trajectory import read_trajectory
    from rlm_local.runlog.trajectory import read_trajectory as new_read
    from rlm_local.scheduling.scheduler import Scheduler as NewScheduler

    assert Scheduler is NewScheduler and read_trajectory is new_read


# Which layers each layer may import (beside itself, errors and documents).
ALLOWED = {
    "engines": {"models"},
    "models": set(),
    "scheduling": {"engines"},
    "sandbox": set(),
    "runlog": {"engines"},
    "loop": {"engines", "scheduling", "sandbox", "runlog", "models"},
}


def _imports(path: Path) -> set[str]:
    """The rlm_local layers a module imports (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    pkg = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("rlm_local."):
                found.add(name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_never_import_upper_ones(layer):
    for path in (PACKAGE / layer).rglob("*.py"):
        bad = _imports(path) - ALLOWED[layer] - {layer, "errors", "documents", "_moved"}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_the_worker_side_imports_nothing_of_the_package_beyond_its_folder():
    for path in (PACKAGE / "sandbox" / "worker").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("rlm_local"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("rlm_local") for a in node.names), path.name


def test_every_error_class_lives_in_errors_py():
    import inspect

    import rlm_local.errors as errors

    defined_there = {obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, errors.Error)}
    for path in PACKAGE.rglob("*.py"):
        if "worker" in path.parts or path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & ({c.__name__ for c in defined_there} | {"Error"}), (
                    f"{path.relative_to(PACKAGE)} defines {node.name}: define it in errors.py"
                )


BAD_CONSTRUCTIONS = [
    ("Request.chat max_tokens=-1", lambda r: r.Request.chat([{"role": "user", "content": "x"}], max_tokens=-1)),
    ("Request.completion temperature=-1", lambda r: r.Request.completion("x", temperature=-1)),
    ("Request with neither", lambda r: r.Request()),
    ("Request prompt not str", lambda r: r.Request(prompt=3)),
    ("SamplingParams top_p=1.5", lambda r: r.SamplingParams(top_p=1.5)),
    ("SamplingParams stop as str", lambda r: r.SamplingParams(stop="\n")),
    ("Limits wall_seconds=-1", lambda r: r.Limits(wall_seconds=-1)),
    ("Limits memory_mb=1.5", lambda r: r.Limits(memory_mb=1.5)),
    ("Scheduler without an engine", lambda r: r.Scheduler(None)),
    ("Sandbox with a bad context", lambda r: r.Sandbox(context=3)),
    ("RLM with a bad max_iterations", lambda r: r.RLM(backend="scripted", max_iterations=0)),
]


@pytest.mark.parametrize("name,make", BAD_CONSTRUCTIONS, ids=[n for n, _ in BAD_CONSTRUCTIONS])
def test_exported_constructors_raise_an_input_error_for_bad_values(name, make):
    """Every mistake a caller can make in an exported constructor surfaces as rlm_local.InputError (still a
    ValueError or TypeError), validated where the value enters."""
    import rlm_local

    with pytest.raises(rlm_local.InputError):
        make(rlm_local)
