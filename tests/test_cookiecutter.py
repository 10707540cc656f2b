"""The cookiecutter front door renders the same project as copier, and copier can update it."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter
from copier import run_copy, run_update

from .helpers import git, snapshot_template

NEXT_STEPS = (
    "make install",
    "make services",
    "make topics",
    "make run",
    "README.md has the rest",
)


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def _assert_same_tree(left: Path, right: Path) -> None:
    assert _tree(left) == _tree(right)
    _, mismatch, errors = filecmp.cmpfiles(left, right, sorted(_tree(left)), shallow=False)
    assert (mismatch, errors) == ([], [])


@pytest.mark.parametrize(
    "answers",
    [
        {},
        {
            "company": "globex",
            "service_name": "invoicebff",
            "upstream_service": "ledger",
            "python_version": "3.13",
            "include_example": False,
            "pipeline_results": True,
        },
    ],
)
def test_cookiecutter_renders_what_copier_renders(
    tmp_path: Path, template_snapshot: Path, answers: dict[str, object]
) -> None:
    made = Path(
        cookiecutter(
            str(template_snapshot),
            no_input=True,
            extra_context=answers,
            output_dir=str(tmp_path / "cookiecutter"),
        )
    )
    expected = tmp_path / "copier" / made.name
    run_copy(str(template_snapshot), str(expected), data=answers, defaults=True, quiet=True)
    assert not (made / "COOKIECUTTER_STUB").exists()
    _assert_same_tree(made, expected)


def test_cookiecutter_refuses_a_bad_answer(
    tmp_path: Path, template_snapshot: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FailedHookException, match="service_name must be lowercase letters"):
        cookiecutter(
            str(template_snapshot),
            no_input=True,
            extra_context={"service_name": "Persona-BFF"},
            output_dir=str(tmp_path),
        )
    assert not any(tmp_path.iterdir())


def test_copier_updates_a_cookiecutter_project(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    made = Path(cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out")))
    git(made, "init", "-q", "-b", "main")
    git(made, "add", "-A")
    git(made, "commit", "-q", "-m", "generated")
    makefile = template / "template/Makefile.jinja"
    makefile.write_text(makefile.read_text() + "\n# Updated by the template.\n")
    git(template, "commit", "-q", "-am", "template change")
    git(template, "tag", "v99.1.0")
    run_update(str(made), defaults=True, overwrite=True, quiet=True)
    assert "# Updated by the template." in (made / "Makefile").read_text()
    assert "_commit: v99.1.0" in (made / ".copier-answers.yml").read_text()


def _cookiecutter_cli(
    python: Path | str, cwd: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`cookiecutter ARGS` run by `python` from a shell in `cwd`, with `cwd/tmp` for its TMPDIR."""
    (cwd / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [str(python), "-m", "cookiecutter", *args],
        cwd=cwd,
        env={**os.environ, "PWD": str(cwd), "TMPDIR": str(cwd / "tmp")},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _left_in(folder: Path) -> list[str]:
    """What cookiecutter left in `folder` besides the TMPDIR it was given, which must be empty."""
    left = [path.name for path in folder.iterdir() if path.name != "tmp"]
    return left + [f"tmp/{path.name}" for path in (folder / "tmp").iterdir()]


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        (
            "service_name=Persona-BFF",
            (
                "Validation error for question 'service_name': service_name must be lowercase"
                " letters and digits, starting with a letter (e.g. personabff); got 'Persona-BFF'"
            ),
        ),
        ("company=" + "a" * 21, "company must be at most 20 characters; got 21"),
        ("upstream_service=personabff", "upstream_service must differ from service_name"),
        ("service_name=redis", "'redis' is a Python keyword or shadows a module"),
    ],
)
def test_cookiecutter_cli_refuses_a_bad_answer_in_one_line(
    tmp_path: Path, template_snapshot: Path, answer: str, allowed: str
) -> None:
    result = _cookiecutter_cli(
        sys.executable, tmp_path, "--no-input", str(template_snapshot), answer
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert allowed in output
    assert "Traceback" not in output
    assert output.strip().count("\n") == 0, output
    assert _left_in(tmp_path) == []


def test_cookiecutter_cli_from_a_relative_path_prints_the_next_steps(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "bff-template")
    result = _cookiecutter_cli(sys.executable, tmp_path, "--no-input", "bff-template")
    assert result.returncode == 0, result.stdout + result.stderr
    answers = (tmp_path / "personabff/.copier-answers.yml").read_text()
    assert f"_src_path: {template}" in answers
    output = result.stdout + result.stderr
    assert output.count("Next steps") == 1
    assert "  cd personabff\n" in output
    for step in NEXT_STEPS:
        assert step in output


@pytest.fixture(scope="session")
def cookiecutter_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh venv with cookiecutter and not copier, once per test session."""
    venv = tmp_path_factory.mktemp("cookiecutter-alone")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin/python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "cookiecutter"],
        check=True,
        timeout=300,
    )
    return python


def test_cookiecutter_without_copier_stops_before_the_first_question(
    tmp_path: Path, template_snapshot: Path, cookiecutter_alone: Path
) -> None:
    # Interactive: an answer is waiting on stdin, and no question may take it.
    result = _cookiecutter_cli(cookiecutter_alone, tmp_path, str(template_snapshot), stdin="acme\n")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "error: this template is rendered by copier 9.4.0 or later" in output
    assert f"`{cookiecutter_alone} -m pip install 'copier>=9.4.0'`" in output
    assert "company" not in output
    assert "Traceback" not in output
    assert _left_in(tmp_path) == []


def test_copier_prints_the_next_steps_with_the_destination(
    tmp_path: Path, template_snapshot: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "copier", "copy", "--defaults", str(template_snapshot), "orderbff"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    _, found, steps = result.stderr.partition("Next steps:")
    assert found, result.stderr
    assert steps.lstrip("\n").startswith("  cd orderbff\n")
    for step in NEXT_STEPS:
        assert step in steps
