"""Cookiecutter's first step, before any question: the Python running cookiecutter must import copier.

The project is rendered by copier (hooks/post_gen_project.py), so without it every answer would be
asked for nothing. Cookiecutter runs this script with its own Python, in a temporary copy of the
template; exiting non-zero stops it before the first question.
"""

import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]


def minimum_copier(template: Path = TEMPLATE) -> str:
    """`_min_copier_version` of the template's copier.yml."""
    config = (template / "copier.yml").read_text(encoding="utf-8")
    found = re.search(r"""^_min_copier_version:\s*["']?([\w.]+)""", config, re.MULTILINE)
    return found.group(1) if found else "9"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def problem(minimum: str) -> str | None:
    """Why copier cannot render this template from this Python, or None when it can."""
    install = (
        f"install it where cookiecutter runs: `{sys.executable} -m pip install 'copier>={minimum}'`"
        " (with pipx: `pipx inject cookiecutter 'copier>={minimum}'`)"
    )
    try:
        import copier  # noqa: F401
    except ImportError:
        return f"error: this template is rendered by copier {minimum} or later; {install}"
    installed = metadata.version("copier")
    if _release(installed) < _release(minimum):
        return f"error: this template needs copier {minimum} or later, found {installed}; {install}"
    return None


def discard_temporary_copy(template: Path) -> None:
    """Remove the copy of the template cookiecutter made to run this hook, as it does not on failure.

    Only a folder cookiecutter made in the temporary directory is removed, never a template itself.
    """
    holder = template.resolve().parent
    if holder.parent == Path(tempfile.gettempdir()).resolve() and holder.name.startswith(
        "cookiecutter"
    ):
        shutil.rmtree(holder, ignore_errors=True)


def main() -> int:
    message = problem(minimum_copier())
    if message:
        print(message, file=sys.stderr)
        if Path.cwd().resolve() == TEMPLATE:
            discard_temporary_copy(TEMPLATE)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
