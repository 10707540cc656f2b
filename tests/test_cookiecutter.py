"""The cookiecutter front door renders the same project as copier, and copier can update it."""

import filecmp
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter
from copier import run_copy, run_update

from .helpers import git, snapshot_template


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
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(template_snapshot),
            no_input=True,
            extra_context={"service_name": "Persona-BFF"},
            output_dir=str(tmp_path),
        )
    assert "service_name must be lowercase letters and digits" in capfd.readouterr().err
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
