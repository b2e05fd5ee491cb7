"""The package's typing: type checkers see the lazy exports of ``rlm_local`` as the real objects, the package
says it is typed (py.typed, shipped), and mypy (configured in pyproject.toml) reports nothing."""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import rlm_local

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlm_local"


def _type_checking_imports() -> dict[str, str]:
    """name -> module (relative to rlm_local) of the imports under ``if TYPE_CHECKING:`` in __init__.py."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1, ast.dump(stmt)
                for alias in stmt.names:
                    # `import X as X`: an explicit re-export, which mypy --strict (no_implicit_reexport) needs
                    assert alias.asname == alias.name, f"import {alias.name} as {alias.name}"
                    found[alias.name] = stmt.module or ""
    return found


def test_every_lazy_export_is_imported_for_type_checkers():
    assert _type_checking_imports() == rlm_local._EXPORTS


def test_the_type_checking_imports_name_the_objects_that_run_time_gives():
    for name, module in _type_checking_imports().items():
        assert getattr(importlib.import_module(f"rlm_local.{module}"), name) is getattr(rlm_local, name)


def test_the_package_is_marked_typed_and_ships_the_marker():
    assert (PACKAGE / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["rlm_local"]


@pytest.mark.slow
def test_mypy_reports_nothing():
    pytest.importorskip("mypy", reason="mypy comes with the dev extra (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, (proc.stdout[-8000:] + proc.stderr[-2000:]).strip()
