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
from typing import Any

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


def copier_config() -> dict[str, Any]:
    """The template's copier.yml (in the copy cookiecutter made), read with the yaml copier brings."""
    import yaml

    return yaml.safe_load((Path(CONTEXT["_repo_dir"]) / "copier.yml").read_text(encoding="utf-8"))


def questions(config: dict[str, Any]) -> list[str]:
    """The questions copier.yml asks, which cookiecutter.json asks too (it is made from them)."""
    return [
        name
        for name, spec in config.items()
        if not name.startswith("_") and isinstance(spec, dict) and spec.get("when") is not False
    ]


def next_steps(config: dict[str, Any]) -> str:
    """copier.yml's `_message_after_copy`, for the folder cookiecutter made, as the user would cd."""
    from jinja2.sandbox import SandboxedEnvironment

    folder = Path.cwd()
    start = Path(os.environ.get("PWD") or CONTEXT["_output_dir"]).resolve()
    if folder.is_relative_to(start):
        folder = folder.relative_to(start)
    env = SandboxedEnvironment(
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
        **config.get("_envops", {}),
    )
    message = config.get("_message_after_copy", "")
    return env.from_string(message).render(_copier_conf={"dst_path": folder})


def main() -> int:
    try:
        from copier import run_copy
    except ImportError:
        print("error: this template renders with copier: `pip install copier`", file=sys.stderr)
        return 1
    Path("COOKIECUTTER_STUB").unlink(missing_ok=True)
    config = copier_config()
    missing = [name for name in questions(config) if name not in CONTEXT]
    if missing:
        print(
            f"error: cookiecutter.json does not ask {', '.join(missing)}, which copier.yml does:"
            " regenerate it with `python scripts/cookiecutter_json.py`",
            file=sys.stderr,
        )
        return 1
    answers = {name: CONTEXT[name] for name in questions(config)}
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
    print(next_steps(config), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
