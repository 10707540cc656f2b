"""`copier update` across template versions: user code survives, template changes arrive.

Each test releases the template at v99.0.0, generates a project, changes it as a user would and
commits, then moves the template forward to v99.1.0 and updates the project.
"""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from copier import run_copy, run_update

from .helpers import (
    advance_to_working_tree,
    assert_ok,
    git,
    run,
    snapshot_release,
    snapshot_template,
)

PKG = "src/personabff"
TEMPLATE_PKG = "template/src/{{package_name}}"


def _commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _release(template: Path, change: Callable[[Path], None], tag: str = "v99.1.0") -> None:
    change(template)
    _commit(template, f"release {tag}")
    git(template, "tag", tag)


def _update(project: Path) -> None:
    run_update(
        str(project), defaults=True, overwrite=True, unsafe=True, quiet=True, vcs_ref="v99.1.0"
    )


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return snapshot_template(tmp_path / "template")


@pytest.fixture
def project(tmp_path: Path, template: Path) -> Path:
    dest = tmp_path / "personabff"
    run_copy(str(template), str(dest), defaults=True, quiet=True, vcs_ref="v99.0.0")
    git(dest, "init", "-q", "-b", "main")
    _commit(dest, "generated")
    return dest


def _edit_as_user(project: Path, reader: str = "QueriesDep") -> dict[str, str]:
    """What a team does after generating: its settings, contracts, projections, routes, README."""
    pkg = project / PKG
    _replace(
        pkg / "settings.py",
        '    """Add your own settings below, e.g. `feature_x_enabled: bool = False`."""\n',
        '    """Add your own settings below, e.g. `feature_x_enabled: bool = False`."""\n\n'
        '    greeting: str = "hello"\n',
    )
    with (pkg / "contracts/personas.py").open("a") as contracts:
        contracts.write(
            '\n\nclass PersonaArchived(Contract):\n    """persona.archived.v1"""\n\n    persona_id: str\n'
        )
    with (pkg / "projections/personas.py").open("a") as projections:
        projections.write(
            "\n\ndef nickname_of(persona: Persona) -> str:\n    return persona.name.split()[0]\n"
        )
    with (pkg / "api/personas.py").open("a") as routes:
        routes.write(
            '\n\n@router.get("/{persona_id}/exists")\n'
            f"async def persona_exists(persona_id: str, readmodel: {reader}) -> bool:\n"
            "    return await readmodel.get(PERSONAS.name, persona_id) is not None\n"
        )
    with (pkg / "handlers/personas.py").open("a") as handlers:
        handlers.write("\n# Reviewed by the identity team.\n")
    with (project / "README.md").open("a") as readme:
        readme.write("\n## Our notes\n\nOn call: the identity team.\n")
    _commit(project, "our changes")
    owned = [
        f"{PKG}/settings.py",
        f"{PKG}/contracts/personas.py",
        f"{PKG}/projections/personas.py",
        f"{PKG}/api/personas.py",
        f"{PKG}/handlers/personas.py",
        "README.md",
    ]
    return {path: (project / path).read_text() for path in owned}


def _assert_clean(project: Path) -> None:
    markers = subprocess.run(
        ["make", "conflicts"], cwd=project, capture_output=True, text=True, check=False
    )
    assert markers.returncode == 0, markers.stdout + markers.stderr
    assert not list(project.rglob("*.rej"))
    assert_ok(run(project, "ruff", "check", "--no-cache", "."))
    assert_ok(run(project, "ruff", "format", "--check", "--no-cache", "."))
    assert_ok(run(project, "mypy"))


@pytest.mark.services
def test_update_keeps_user_code_and_brings_template_changes(
    project: Path, template: Path, services_env: dict[str, str]
) -> None:
    mine = _edit_as_user(project)

    def v2(t: Path) -> None:
        _replace(  # a template-owned module changes
            t / TEMPLATE_PKG / "runtime/health.py",
            '"""Liveness and readiness.',
            '"""Probes, v99.1.0:',
        )
        (t / TEMPLATE_PKG / "runtime/about.py").write_text(
            '"""Added in v99.1.0."""\n\nRELEASE = "v99.1.0"\n'
        )
        git(
            t,
            "mv",
            f"{TEMPLATE_PKG}/runtime/commands/http.py",
            f"{TEMPLATE_PKG}/runtime/commands/routes.py",
        )
        _replace(
            t / TEMPLATE_PKG / "app.py",
            "from .runtime.commands import http as command_routes",
            "from .runtime.commands import routes as command_routes",
        )
        _replace(
            t / TEMPLATE_PKG / "runtime/__init__.py",
            "from .commands.http ",
            "from .commands.routes ",
        )
        # Templates of files the user owns change too: the user's copies must not.
        with (t / "template/README.md.jinja").open("a") as readme:
            readme.write("\nA paragraph added in v99.1.0.\n")
        _replace(t / TEMPLATE_PKG / "settings.py", "Add your own settings below", "Your settings")

    _release(template, v2)
    _update(project)

    assert {path: (project / path).read_text() for path in mine} == mine
    assert "Probes, v99.1.0:" in (project / PKG / "runtime/health.py").read_text()
    assert (project / PKG / "runtime/about.py").exists()
    assert not (project / PKG / "runtime/commands/http.py").exists()
    assert (project / PKG / "runtime/commands/routes.py").exists()
    assert "_commit: v99.1.0" in (project / ".copier-answers.yml").read_text()
    _assert_clean(project)
    tests = [
        "tests/test_settings.py",
        "tests/test_events.py",
        "tests/test_personas.py",
        "tests/test_health.py",
    ]
    assert_ok(run(project, "pytest", "-p", "no:cacheprovider", "-q", *tests, env=services_env))


def test_a_conflict_is_left_inline_and_the_generated_check_catches_it(
    project: Path, template: Path
) -> None:
    health = project / PKG / "runtime/health.py"
    alive = 'JSONResponse({"status": "alive"})'
    _replace(health, alive, 'JSONResponse({"status": "alive", "by": "us"})')
    _commit(project, "we changed a template-owned line")

    def v2(t: Path) -> None:
        _replace(
            t / TEMPLATE_PKG / "runtime/health.py",
            alive,
            'JSONResponse({"status": "alive", "release": "v99.1.0"})',
        )

    _release(template, v2)
    _update(project)  # copier exits 0, leaving markers in the file

    assert "<<<<<<<" in health.read_text()
    lint = subprocess.run(
        ["make", "lint", f"PYTHON={sys.executable}"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode != 0
    assert "runtime/health.py:" in lint.stdout and "<<<<<<< before updating" in lint.stdout
    assert "error: conflict markers above (left by copier update)" in lint.stdout


def test_a_migration_moves_user_files_when_a_release_renames_their_folder(
    project: Path, template: Path
) -> None:
    mine = _edit_as_user(project)

    def v2(t: Path) -> None:
        git(t, "mv", f"{TEMPLATE_PKG}/handlers", f"{TEMPLATE_PKG}/commands")
        _replace(
            t / TEMPLATE_PKG / "app.py",
            "from .handlers import HANDLERS",
            "from .commands import HANDLERS",
        )
        _replace(
            t / TEMPLATE_PKG / "cli.py",
            "from .handlers import HANDLERS",
            "from .commands import HANDLERS",
        )
        _replace(
            t / "template/tests/test_contracts.py.jinja",
            "{{ package_name }}.handlers import HANDLERS",
            "{{ package_name }}.commands import HANDLERS",
        )
        copier_yml = t / "copier.yml"
        _replace(
            copier_yml,
            '"src/{{ package_name }}/handlers/**"',
            '"src/{{ package_name }}/commands/**"',
        )
        _replace(
            copier_yml,
            "_migrations: []",
            "_migrations:\n"
            "  - version: v99.1.0\n"
            "    when: \"{{ _stage == 'before' }}\"\n"
            '    command: [python3, "{{ _copier_conf.src_path }}/hooks/migrate.py", rename,\n'
            '              "src/{service_name}/handlers", "src/{service_name}/commands"]\n',
        )

    _release(template, v2)
    _update(project)

    assert not (project / PKG / "handlers").exists()
    moved = (project / PKG / "commands/personas.py").read_text()
    assert moved == mine[f"{PKG}/handlers/personas.py"]
    _assert_clean(project)


def _sign_in_own_clients(tests: Path) -> None:
    """The changelog's step for tests of one's own once command routes need a bearer token: a
    client built by hand (the `client` fixture is signed in already) sends the `signed_in`
    headers, a fixture the template's conftest gives."""
    text = tests.read_text()
    own_client = 'httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")'
    assert own_client in text
    text = text.replace(own_client, own_client[:-1] + ", headers=signed_in)")
    for signature in (
        "    settings: Settings, publish: Publish, redis: Redis\n) -> None:",
        "    settings: Settings, publish: Publish\n) -> None:",
    ):
        assert signature in text
        text = text.replace(signature, signature.replace("\n)", ", signed_in: dict[str, str]\n)"))
    tests.write_text(text)


# The last release before the user's journey was tested end to end (make new, make update).
PREVIOUS_RELEASE = "3c8fa5e"


@pytest.mark.services
def test_a_project_of_the_previous_release_updates_to_this_one(
    tmp_path: Path, services_env: dict[str, str]
) -> None:
    template = snapshot_release(tmp_path / "template", PREVIOUS_RELEASE)
    project = tmp_path / "personabff"
    run_copy(str(template), str(project), defaults=True, quiet=True, vcs_ref="v99.0.0")
    git(project, "init", "-q", "-b", "main")
    _commit(project, "generated")
    mine = _edit_as_user(project, reader="ReadModelDep")  # what that release's example imported

    advance_to_working_tree(template)
    _update(project)

    assert {path: (project / path).read_text() for path in mine} == mine
    assert "_commit: v99.1.0" in (project / ".copier-answers.yml").read_text()
    _assert_clean(project)
    assert_ok(run(project, "personabff", "contracts", "check"))
    _sign_in_own_clients(project / "tests/test_personas.py")
    result = run(project, "pytest", "-p", "no:cacheprovider", "-q", "-x", env=services_env)
    assert_ok(result)
    assert " passed" in result.stdout and "skipped" not in result.stdout
    # The forms the team wrote then still work, and say what replaces them.
    assert "TemplateDeprecationWarning: Projection(type, data, ...) is deprecated" in result.stdout
