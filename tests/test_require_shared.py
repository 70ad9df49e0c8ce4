"""A clone without ../shared must fail its CI test run (--require-shared) with one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    tests = tmp_path / "clone" / "tests"  # no tmp_path/shared beside the clone
    tests.mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", tests)
    (tests / "test_uses_shared.py").write_text(
        "from conftest import PARITY_SMALL, require_shared\n\n"
        "def test_reads_fixture():\n    require_shared(PARITY_SMALL)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # the local behaviour, also when run in CI
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=tests,
                          capture_output=True, text=True, timeout=300, env={**env, **(extra_env or {})})


def test_missing_shared_fails_the_run_in_ci_mode(tmp_path: Path) -> None:
    result = _run(tmp_path, "--require-shared")
    assert result.returncode != 0
    assert "--require-shared" in result.stdout + result.stderr and "shared" in result.stdout + result.stderr


def test_ci_environment_is_strict_without_the_flag(tmp_path: Path) -> None:
    result = _run(tmp_path, extra_env={"CI": "true"})
    assert result.returncode != 0 and "is missing" in result.stdout + result.stderr


def test_missing_shared_skips_locally(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 0 and "1 skipped" in result.stdout
