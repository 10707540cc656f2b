"""Cookiecutter's front door: render the copier template into the directory cookiecutter made.

Cookiecutter renders this file with Jinja first, so the answers arrive as JSON below. The project is
rendered by copier from the same `template/`, validated by the same `copier.yml`, and records a
`.copier-answers.yml`, so `copier update` works on it like on any copier-made project. Copier runs
quietly; this hook then prints copier.yml's `_message_after_copy` for the folder cookiecutter made.
"""

import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from jinja2 import Environment

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")
REMOTE_PREFIXES = ("gh:", "gl:", "git@", "git+", "https://", "http://", "ssh://")


def template_source() -> str:
    """Where copier (and later `copier update`) finds the template.

    Cookiecutter hands its hooks a temporary copy of a local template (`_repo_dir`), deleted once
    the project is made, so a local template is found again from the path cookiecutter was given,
    relative to where it was started: the shell's PWD, or `_output_dir` when no `-o` was given.
    """
    template = str(CONTEXT["_template"])
    if template.startswith(REMOTE_PREFIXES):
        return template
    copy = Path(CONTEXT["_repo_dir"]).resolve()
    starts = [Path(os.environ.get("PWD") or os.devnull), Path(CONTEXT["_output_dir"])]
    for start in starts:
        candidate = (start / template).resolve()
        if _same_template(candidate, copy):
            return str(candidate)
    print(
        f"note: the project records {copy}, a temporary copy of the template, as its source;"
        " set `_src_path` in .copier-answers.yml to the template's location before `copier update`",
        file=sys.stderr,
    )
    return str(copy)


def _same_template(candidate: Path, copy: Path) -> bool:
    if candidate == copy:
        return True
    files = ("copier.yml", "cookiecutter.json")
    try:
        return all((candidate / name).read_bytes() == (copy / name).read_bytes() for name in files)
    except OSError:
        return False


def load_copier_yml() -> ModuleType:
    """hooks/copier_yml.py, from the copy of the template cookiecutter made (this hook runs from a
    file of its own, so the template is not on the path)."""
    sys.path.insert(0, str(CONTEXT["_repo_dir"]))
    import hooks.copier_yml

    return hooks.copier_yml


def next_steps(config: dict[str, Any], env: Environment) -> str:
    """copier.yml's `_message_after_copy`, for the folder cookiecutter made, as the user would cd."""
    folder = Path.cwd()
    start = Path(os.environ.get("PWD") or CONTEXT["_output_dir"]).resolve()
    if folder.is_relative_to(start):
        folder = folder.relative_to(start)
    message = config.get("_message_after_copy", "")
    return env.from_string(message).render(_copier_conf={"dst_path": folder})


def main() -> int:
    try:
        from copier import run_copy
    except ImportError:
        print("error: this template renders with copier: `pip install copier`", file=sys.stderr)
        return 1
    Path("COOKIECUTTER_STUB").unlink(missing_ok=True)
    copier_yml = load_copier_yml()
    config = copier_yml.load(Path(CONTEXT["_repo_dir"]))
    questions = copier_yml.asked(config)
    missing = [name for name in questions if name not in CONTEXT]
    if missing:
        print(
            f"error: cookiecutter.json does not ask {', '.join(missing)}, which copier.yml does:"
            " regenerate it with `python scripts/cookiecutter_json.py`",
            file=sys.stderr,
        )
        return 1
    answers = {name: CONTEXT[name] for name in questions}
    try:
        run_copy(
            template_source(),
            ".",
            data=answers,
            vcs_ref=CONTEXT.get("_checkout") or None,
            defaults=True,
            overwrite=True,
            quiet=True,
        )
    except ValueError as exc:  # copier's validators refuse the answer, saying what is allowed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(next_steps(config, copier_yml.jinja(config)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
