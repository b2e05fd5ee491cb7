"""The command line as a user meets it: real subprocesses, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out


def cli(*args: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlm_local.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env=env,
    )


def one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlm-local: error:"), proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_missing_file(tmp_path):
    one_line_error(cli("run", "--context", str(tmp_path / "nope.txt"), "q"), 2, "no such file")


def test_binary_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00\x01binary")
    one_line_error(cli("run", "--context", str(f), "q"), 2, "binary")


def test_empty_stdin():
    one_line_error(cli("run", "--context", "-", "q", stdin=""), 2, "empty")


def test_no_context_and_no_demo():
    one_line_error(cli("run", "q"), 2, "--context")


def test_unknown_backend(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    one_line_error(cli("run", "--context", str(f), "--backend", "nope", "q", "-q"), 2, "unknown backend")


def test_unknown_model(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    one_line_error(cli("run", "--context", str(f), "--model", "org/not-here", "q", "-q"), 2, "never downloads")


def test_model_directory_that_cannot_load(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    # a model that exists but fails to load is not the caller's typo: exit 1, not 2 (2 is for bad input)
    one_line_error(
        cli("run", "--context", str(f), "--model", str(broken), "--backend", "transformers", "q", "-q"),
        1,
        "could not load model",
    )
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    one_line_error(cli("run", "--context", str(f), "--model", str(fake), "q", "-q"), 1, "is not a GGUF file")
    # the default engine (llama.cpp) takes GGUF files: a weights directory gets the backend that can load it
    one_line_error(cli("run", "--context", str(f), "--model", str(broken), "q", "-q"), 2, "--backend transformers")
    one_line_error(cli("run", "--context", str(f), "--model", "qwen3-coder", "q", "-q"), 2, "--backend vllm")


def test_openai_backend_needs_a_url(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    one_line_error(cli("run", "--context", str(f), "--backend", "openai", "q"), 2, "--base-url")


def test_models_lists_the_registry():
    proc = cli("models")
    assert proc.returncode == 0
    assert "gemma-3-270m" in proc.stdout and "Qwen/Qwen3-Coder-30B-A3B-Instruct" in proc.stdout


@pytest.mark.model
def test_demo_end_to_end_on_the_embedded_model(tmp_path):
    """The README's demo, smaller: the real model, the real sandbox, the CLI, a trajectory file."""
    traj = tmp_path / "demo.jsonl"
    proc = cli("run", "--demo", "--demo-length", "60000", "--max-iterations", "4", "--trajectory", str(traj), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    out = json.loads(proc.stdout)
    assert out["stopped_reason"] in ("final", "max_iterations")
    assert "demo PASSED" in proc.stderr or "demo FAILED" in proc.stderr
    events = [json.loads(line) for line in traj.read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "final"
    assert any(e["event"] == "cell" for e in events)


def test_internal_error_is_not_reported_as_bad_input(monkeypatch, capsys, tmp_path):
    """A bug (an exception that is not an rlm_local.Error) exits 1 with a hint and the log path, and the
    full traceback lands in the log; bad input stays one line with exit 2."""
    from rlm_local import cli as cli_module

    log = tmp_path / "cli.log"
    monkeypatch.setenv("RLM_LOCAL_LOG", str(log))

    def broken(args, err):
        raise TypeError("unsupported operand in a helper")

    monkeypatch.setattr(cli_module, "_cmd_models", broken)
    assert cli_module.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "internal error: TypeError: unsupported operand" in err and str(log) in err
    assert "Traceback" not in err
    assert "Traceback" in log.read_text() and "unsupported operand" in log.read_text()
    assert cli_module.main(["run", "q"]) == 2
    assert capsys.readouterr().err.strip().startswith("rlm-local: error: give --context")


def test_every_api_error_derives_from_one_base():
    import rlm_local
    from rlm_local.engines import EngineError, make_engine

    for cls in (
        rlm_local.RLMError,
        rlm_local.ContextError,
        rlm_local.ModelNotFoundError,
        rlm_local.ModelLoadError,
        rlm_local.DocumentError,
        EngineError,
    ):
        assert issubclass(cls, rlm_local.Error), cls
    with pytest.raises(rlm_local.Error, match="unexpected keyword"):
        make_engine("scripted", replies=["x"], bogus=1)


def test_prepare_builds_the_default_model_file_and_refuses_unknown_models():
    proc = cli("prepare")
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    one_line_error(cli("prepare", "no-such-model"), 2, "neither a .gguf file nor a packaged GGUF model")
    one_line_error(cli("prepare", "--backend", "openai"), 2, "prepare --backend takes llamacpp or transformers")


def test_serving_without_the_server_extra_is_one_line(monkeypatch, capsys, tmp_path):
    """Before: `rlm-local serve` without the extra was reported as an internal error with a traceback hint."""
    import importlib.util

    from rlm_local import cli as cli_module

    monkeypatch.setenv("RLM_LOCAL_LOG", str(tmp_path / "cli.log"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sse_starlette" else real(name, *a)
    )
    for argv in (["serve"], ["serve", "--bare"], ["view", str(tmp_path / "t.jsonl")]):
        assert cli_module.main(argv) == 1  # a missing install step, not bad input
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install 'rlm-local[server]'" in err and "sse_starlette" in err, err
