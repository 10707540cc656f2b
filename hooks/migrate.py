"""Migrations run by copier's `_migrations` when an update crosses a release that moved things.

Run in the project being updated, with the standard library only. Every action is idempotent:
copier may run a migration more than once.

    python3 migrate.py rename OLD NEW    move OLD to NEW (a file or a folder), if OLD is there

Paths may name answers in braces, e.g. `src/{service_name}/handlers`: copier renders a migration's
command before it has loaded the project's answers, so this script reads them from
`.copier-answers.yml` itself.
"""

import shutil
import sys
from pathlib import Path


def rename(old: Path, new: Path) -> str:
    if not old.exists():
        return f"nothing to move: {old} is not there"
    if new.exists():
        raise SystemExit(f"error: cannot move {old} to {new}: {new} exists already")
    new.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old, new)
    return f"moved {old} to {new}"


def answers(path: Path = Path(".copier-answers.yml")) -> dict[str, str]:
    """The flat `key: value` answers copier stores (quotes removed)."""
    found = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "#")):
            found[key.strip()] = value.strip().strip("'\"")
    return found


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] != "rename":
        raise SystemExit(f"usage: migrate.py rename OLD NEW (got {' '.join(argv)})")
    given = answers()
    old, new = (Path(arg.format(**given)) for arg in argv[1:])
    print(rename(old, new))


if __name__ == "__main__":
    main(sys.argv[1:])
