"""Render the template and run what a generated project runs.

Every rendered variant uses the one shared environment this test run lives in (`make install`), so
nothing is installed per variant: tools run as `python -m ...` with the variant's `src` on the path.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from copier import run_copy

ROOT = Path(__file__).resolve().parents[1]


def render(dest: Path, **answers: Any) -> Path:
    """Render the working tree of the template (uncommitted changes included) into `dest`."""
    run_copy(
        str(ROOT),
        str(dest),
        data=answers,
        defaults=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    return dest


def run(
    project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `python -m <args>` in a rendered project, as its own Makefile would."""
    environ = {**os.environ, "PYTHONPATH": str(project / "src"), **(env or {})}
    environ.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout
