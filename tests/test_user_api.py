"""The API user code is written against: `runtime`'s public names, typed declarations, and a
machinery that never reaches into user code."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import render, run

# What the team owns once generated: it may import the machinery only as `..runtime`.
USER_OWNED = ("settings.py", "contracts", "projections", "api", "handlers")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every `from ... import` in `path`."""
    tree = ast.parse(path.read_text())
    return [
        (node.level, node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    return {
        "example": render(root / "example"),
        "bare": render(root / "bare", include_example=False),
    }


@pytest.mark.parametrize("variant", ["example", "bare"])
def test_user_code_imports_the_machinery_from_its_public_api_only(
    services: dict[str, Path], variant: str
) -> None:
    package = services[variant] / "src/personabff"
    files = [
        path
        for name in USER_OWNED
        for path in ([package / name] if name.endswith(".py") else (package / name).rglob("*.py"))
    ]
    assert files
    reaching_in = [
        f"{path.relative_to(package)}: from {'.' * level}{module}"
        for path in files
        for level, module in _imports(path)
        if module.startswith("runtime.") or (level == 0 and ".runtime." in module)
    ]
    assert not reaching_in, reaching_in


def test_the_machinery_never_imports_user_code(services: dict[str, Path]) -> None:
    runtime = services["example"] / "src/personabff/runtime"
    upward = [
        f"{path.name}: from {'.' * level}{module}"
        for path in runtime.glob("*.py")
        for level, module in _imports(path)
        if level > 1
        or (level == 0 and module.startswith("personabff") and ".runtime" not in module)
    ]
    assert not upward, upward


MISMATCHES = {
    "a key reading another event": (
        "def renamed_key(event: Event[PersonaRenamed]) -> str:\n"
        "    return event.data.persona_id\n\n\n"
        "WRONG = project(created, into=PERSONAS, key=renamed_key)\n"
    ),
    "a collection of another model": (
        'OTHERS = Collection("others", PersonaCreated)\n'
        "WRONG = project(created, into=OTHERS, key=lambda e: e.data.persona_id)\n"
    ),
    "a key reading a field the event lacks": (
        "WRONG = project(deleted, into=PERSONAS, key=lambda e: e.data.display_name)\n"
    ),
}


@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_a_mismatched_declaration_fails_the_type_check(tmp_path: Path, mismatch: str) -> None:
    project = render(tmp_path / "personabff")
    projections = project / "src/personabff/projections/personas.py"
    projections.write_text(f"{projections.read_text()}\n\n{MISMATCHES[mismatch]}")
    checked = run(project, "mypy")
    assert checked.returncode == 1, checked.stdout
    assert "projections/personas.py" in checked.stdout, checked.stdout


def test_a_declaration_reads_its_type_from_the_contract(tmp_path: Path) -> None:
    project = render(tmp_path / "personabff")
    script = (
        "from personabff.projections import REGISTRY\n"
        "print(sorted(p.event_type for p in REGISTRY.projections()))\n"
        "print([(u.from_type, u.to_type) for u in REGISTRY.upcasters()])\n"
        "from personabff.api.personas import RENAME_PERSONA\n"
        "print(RENAME_PERSONA.command_type)\n"
    )
    found = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr  # no warning either: nothing deprecated is used
    assert found.stdout.splitlines() == [
        "['persona.created.v1', 'persona.deleted.v1', 'persona.renamed.v2']",
        "[('persona.renamed.v1', 'persona.renamed.v2')]",
        "persona.rename.v1",
    ]
