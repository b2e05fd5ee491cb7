"""Shared fixtures for the sandbox suites: a secret planted in the parent (environment variable and a
file only the parent's user can read) that no sandboxed code may ever reveal."""

from __future__ import annotations

import os
import secrets
import tempfile

import pytest

from rlm_local.sandbox import Limits, Sandbox

SECRET = "s3cr3t-" + secrets.token_hex(12)
SECRET_ENV = "RLM_TEST_PARENT_SECRET"


@pytest.fixture(scope="session")
def secret_file():
    os.environ[SECRET_ENV] = SECRET
    fd, path = tempfile.mkstemp(prefix="rlm-test-secret-")
    with os.fdopen(fd, "w") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    yield path
    os.unlink(path)
    os.environ.pop(SECRET_ENV, None)


def echo_handler(prompts: list[str]) -> list[str]:
    return [f"answer to: {p[:40]}" for p in prompts]


@pytest.fixture
def make_sandbox():
    """Factory: make_sandbox(context=..., **limit_overrides); every sandbox is closed after the test."""
    made: list[Sandbox] = []

    def make(context="hello world", llm_handler=echo_handler, rlm_handler=None, **limits) -> Sandbox:
        sb = Sandbox(context=context, llm_handler=llm_handler, rlm_handler=rlm_handler, limits=Limits(**limits))
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def leaked(result, secret: str = SECRET) -> bool:
    text = (result.stdout or "") + (result.error or "") + (result.final or "")
    return secret in text


@pytest.fixture(scope="module")
def attack_sandbox(secret_file):
    """One session shared by a module's attack cells (each attack must leave it intact anyway)."""
    sb = Sandbox(context="public text", llm_handler=echo_handler, limits=Limits(wall_seconds=10, cpu_seconds=10))
    yield sb
    sb.close()


def run_attack(sandbox: Sandbox, code: str, secret_path: str):
    """Runs one attack cell and checks what every attack must give: an error, no ESCAPED marker, no
    secret, no host path in the message."""
    r = sandbox.run(code.replace("{path}", secret_path).replace("{env}", SECRET_ENV))
    assert r.error is not None, f"ran without error: {r.stdout!r}"
    assert "ESCAPED" not in r.stdout, r.stdout
    assert not leaked(r)
    assert "/work/" not in r.error and ".venv" not in r.error
    return r


@pytest.fixture
def escaped():
    """Factory of sessions whose cells get the real os, sys and ctypes (the test-only hook), as after a
    full escape of the language layer; the OS layer must hold on its own."""
    made: list[Sandbox] = []

    def make(**limits) -> Sandbox:
        sb = Sandbox(
            context="ctx", llm_handler=lambda ps: ["ok"] * len(ps), limits=Limits(**limits), _grant_real_os=True
        )
        assert "seccomp" in sb.hardening, sb.hardening
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def alive(pid: int) -> bool:
    """A process that exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
