"""The API user code is written against: `runtime`'s public names, typed declarations, and a
machinery that never reaches into user code."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, assert_ok, render, run

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
    tests = services[variant] / "tests"  # the user's tests: the example's and the fixtures file
    files += [tests / "fixtures.py", *tests.glob("test_personas.py")]
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
        f"{path.relative_to(runtime)}: from {'.' * level}{module}"
        for path in runtime.rglob("*.py")
        for level, module in _imports(path)
        if level > len(path.relative_to(runtime).parts)  # above runtime/, into the package
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
        "from personabff.handlers import HANDLERS\n"
        "print([(h.command_type, sorted(h.events)) for h in HANDLERS])\n"
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
        "['persona.created.v1', 'persona.deleted.v1', 'persona.pinned.v1', 'persona.renamed.v2']",
        "[('persona.renamed.v1', 'persona.renamed.v2')]",
        "persona.rename.v1",
        "[('persona.pin.v1', ['persona.pinned.v1'])]",
    ]


def _recipe() -> dict[str, str]:
    """docs/work.md's "Add an upstream": each python block opens with the file it is."""
    section = (ROOT / "docs/work.md").read_text().split("\n## Add an upstream\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        path, _, code = block.partition("\n")
        assert path.startswith("# "), f"a recipe block names its file first: {path!r}"
        files[path.removeprefix("# ")] = code
    return files


@pytest.mark.services
def test_the_add_an_upstream_recipe_works(tmp_path: Path, services_env: dict[str, str]) -> None:
    project = render(tmp_path / "personabff")
    for path, code in _recipe().items():
        (project / path).write_text(code)
    persona = project / "src/personabff/contracts/personas.py"
    counter = "    renames: int = 0"
    assert counter in persona.read_text()
    persona.write_text(persona.read_text().replace(counter, f"    orders: int = 0\n{counter}"))
    example_tests = project / "tests/test_personas.py"
    whole = '"pinned": False}'
    assert whole in example_tests.read_text()
    example_tests.write_text(
        example_tests.read_text().replace(whole, '"pinned": False, "orders": 0}')
    )
    assert_ok(
        run(project, "ruff", "format", "--no-cache", "tests")
    )  # `make format`, as a user would

    for check in (
        ("ruff", "check", "--no-cache", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
    ):
        assert_ok(run(project, *check))
    contracts = run(project, "personabff", "contracts", "check")
    assert_ok(contracts)
    assert "compatible: order.placed.v1: new message" in contracts.stdout
    document = run(project, "personabff", "contracts", "asyncapi")
    assert_ok(document)
    channels = {
        channel["address"]: sorted(
            ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()
        )
        for channel in json.loads(document.stdout)["channels"].values()
        if channel["address"] and channel["address"].endswith("service.events")
    }
    assert channels == {
        "arcadia.identity.orderservice.events": [
            "order.placed.v1",
            "order.shipped.v1",
            "order.shipped.v2",
        ],
        "arcadia.identity.personaservice.events": [
            "persona.created.v1",
            "persona.deleted.v1",
            "persona.renamed.v1",
            "persona.renamed.v2",
        ],
    }
    suite = run(project, "pytest", "-p", "no:cacheprovider", "-q", "-x", env=services_env)
    assert_ok(suite)
    assert " passed" in suite.stdout and "skipped" not in suite.stdout
