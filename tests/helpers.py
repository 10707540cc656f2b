"""Render the template and run what a generated project runs.

Every rendered variant uses the one shared environment this test run lives in (`make install`), so
nothing is installed per variant: tools run as `python -m ...` with the variant's `src` on the path.
"""

import io
import os
import subprocess
import sys
import tarfile
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


def snapshot_template(dest: Path, tag: str = "v99.0.0") -> Path:
    """The template's working tree committed into a fresh repo at `dest`, tagged `tag`.

    A copy made from a dirty checkout records a commit that later updates cannot find; a snapshot
    gives copier and cookiecutter a real, versioned source that a test may move forward.
    """
    _copy_working_tree(dest)
    git(dest, "init", "-q", "-b", "main")
    _commit_and_tag(dest, tag)
    return dest


def snapshot_release(dest: Path, commit: str, tag: str = "v99.0.0") -> Path:
    """The template as it was at `commit` of this repository, committed into a fresh repo at
    `dest` and tagged `tag`: a real earlier release that `advance_to_working_tree` can update."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=False
    )
    assert archive.returncode == 0, f"commit {commit} is not in this clone: {archive.stderr!r}"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="tar")
    git(dest, "init", "-q", "-b", "main")
    _commit_and_tag(dest, tag)
    return dest


def advance_to_working_tree(template: Path, tag: str = "v99.1.0") -> None:
    """Release the template's current working tree on top of an earlier snapshot, as `tag`."""
    for name in filter(None, git(template, "ls-files", "-z").split("\0")):
        (template / name).unlink()
    _copy_working_tree(template)
    _commit_and_tag(template, tag)


def _copy_working_tree(dest: Path) -> None:
    files = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)


def _commit_and_tag(repo: Path, tag: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {tag}")
    git(repo, "tag", tag)


def forget_keys(redis_url: str, *prefixes: str) -> None:
    """Delete a test's Redis keys (hash-tagged `{prefix...}`), so the shared Redis stays small."""
    from redis import Redis

    with Redis.from_url(redis_url) as redis:
        for prefix in prefixes:
            keys = list(redis.scan_iter(match="{" + prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                redis.unlink(*keys[start : start + 1000])
