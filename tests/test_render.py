"""Render the template for a matrix of answers; each result must pass its own checks as rendered.

Every variant is linted and type-checked; the representative ones also run their generated test
suite against the real Kafka and Redis.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import assert_ok, render, run

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "bare": {"include_example": False, "pipeline_results": True, "python_version": "3.12"},
    "longest-names": {
        "company": "c" * 19 + "1",
        "namespace": "n" * 20,
        "service_name": "s" * 29 + "9",
        "upstream_service": "u" * 30,
        "python_version": "3.13",
        "pipeline_results": True,
    },
    "other-names": {
        "company": "globex",
        "namespace": "billing",
        "service_name": "invoicebff",
        "upstream_service": "ledger",
        "description": 'Invoices for the "billing" UI, in one place',
        "python_version": "3.12",
    },
}
# The defaults run their suite in a virtualenv of their own in test_journey.py.
WITH_SERVICES = {"bare"}


def _check(project: Path) -> None:
    leftovers = [
        path
        for path in project.rglob("*")
        if path.is_file() and ("{{" in path.read_text() or "{%" in path.read_text())
    ]
    assert not leftovers, f"unrendered Jinja in {leftovers}"
    assert_ok(run(project, "ruff", "check", "--no-cache", "."))
    assert_ok(run(project, "ruff", "format", "--check", "--no-cache", "."))
    assert_ok(run(project, "mypy"))
    # The baseline rendered with the project is the one its contracts produce.
    (package,) = (path.name for path in (project / "src").iterdir())
    written = project / "baseline-now.json"
    assert_ok(run(project, package, "contracts", "baseline", "--baseline", str(written)))
    assert (
        written.read_text() == (project / "src" / package / "contracts/baseline.json").read_text()
    )
    written.unlink()


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - WITH_SERVICES))
def test_variant_passes_lint_and_types(tmp_path: Path, variant: str) -> None:
    _check(render(tmp_path / variant, **VARIANTS[variant]))


@pytest.mark.services
@pytest.mark.parametrize("variant", sorted(WITH_SERVICES))
def test_variant_passes_its_own_suite(
    tmp_path: Path, variant: str, services_env: dict[str, str]
) -> None:
    project = render(tmp_path / variant, **VARIANTS[variant])
    _check(project)
    result = run(project, "pytest", "-p", "no:cacheprovider", "-q", env=services_env)
    assert_ok(result)
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_example_files_only_with_the_example(tmp_path: Path) -> None:
    bare = render(tmp_path / "bare", include_example=False)
    full = render(tmp_path / "full")
    for part in ("contracts", "projections", "api"):
        assert (full / f"src/personabff/{part}/personas.py").exists()
        assert not (bare / f"src/personabff/{part}/personas.py").exists()
    assert (full / "tests/test_personas.py").exists()
    assert not (bare / "tests/test_personas.py").exists()


def test_results_topic_only_with_pipeline_results(tmp_path: Path) -> None:
    with_results = render(tmp_path / "on", pipeline_results=True)
    without = render(tmp_path / "off")
    assert "arcadia.identity.personabff.results" in (with_results / "README.md").read_text()
    assert "arcadia.identity.personabff.results" not in (without / "README.md").read_text()
    assert (
        "PIPELINE_RESULTS = True"
        in (with_results / "src/personabff/runtime/settings.py").read_text()
    )


@pytest.mark.parametrize("variant", ["defaults", "bare"])
def test_the_readme_lists_every_setting(tmp_path: Path, variant: str) -> None:
    project = render(tmp_path / variant, **VARIANTS[variant])
    fields = subprocess.run(
        [
            sys.executable,
            "-c",
            "from personabff.settings import Settings as S; print(*S.model_fields)",
        ],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    readme = (project / "README.md").read_text()
    missing = [name.upper() for name in fields.stdout.split() if f"`{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's tables: {missing}"
