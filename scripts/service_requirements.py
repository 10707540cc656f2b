"""Print the requirements of a service generated with default answers, extras included, one per line.

The template repository's shared environment installs these once, so every rendered variant can be
linted, type-checked and tested without an install of its own.
"""

import sys
import tempfile
import tomllib
from pathlib import Path

from copier import run_copy

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_copy(str(ROOT), tmp, defaults=True, vcs_ref="HEAD", quiet=True)
        project = tomllib.loads((Path(tmp) / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *(dep for deps in extras.values() for dep in deps)]
    # An extra that names the project itself (dev includes otel) brings nothing new.
    requirements = [dep for dep in requirements if not dep.startswith(f"{project['name']}[")]
    sys.stdout.write("\n".join(requirements) + "\n")


if __name__ == "__main__":
    main()
