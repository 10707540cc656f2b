"""`make new`: scaffold a service from this clone of the template, asking each question.

    python scripts/new.py [DEST] [--defaults] [--data NAME=VALUE ...] [--vcs-ref REF]

The service goes to DEST, or next to this clone in a folder named after the `service_name` answer.
It records the clone's absolute path as its template source (or `--src`, e.g. the clone's remote
URL), so `copier update` finds the template again from anywhere.

Copier renders into the destination it was given before the questions are asked, so the answers
are collected by a quiet first render into a scratch folder; the real render then writes the
destination with those answers and shows copier's own output and next steps.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from copier import run_copy

ROOT = Path(__file__).resolve().parents[1]


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make new", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, help="folder (default: ../<service_name>)")
    parser.add_argument("--src", default=str(ROOT), help="template source to record")
    parser.add_argument("--defaults", action="store_true", help="take every default unasked")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--vcs-ref", help="template version (default: the latest tag, else HEAD)")
    return parser.parse_args(argv)


def given(pairs: list[str]) -> dict[str, str]:
    data = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --data takes NAME=VALUE; got {pair!r}")
        data[name] = value
    return data


def main(argv: list[str]) -> int:
    args = arguments(argv)
    common = {"vcs_ref": args.vcs_ref}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            run_copy(
                args.src,
                scratch,
                data=given(args.data),
                defaults=args.defaults,
                quiet=True,
                **common,
            )
        except (KeyboardInterrupt, EOFError):
            print("\nstopped: nothing was written", file=sys.stderr)
            return 1
        except ValueError as refused:  # a validator's words: what the answer must be
            print(f"error: {refused}", file=sys.stderr)
            return 1
        recorded = yaml.safe_load((Path(scratch) / ".copier-answers.yml").read_text())
    answers = {name: value for name, value in recorded.items() if not name.startswith("_")}
    dest = args.dest or ROOT.parent / answers["service_name"]
    if dest.exists() and any(dest.iterdir()):
        print(f"error: {dest} exists and is not empty; give another DEST", file=sys.stderr)
        return 1
    run_copy(args.src, str(dest), data=answers, defaults=True, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
