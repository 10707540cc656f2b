"""Write cookiecutter.json from copier.yml, the one source of the template's questions.

Cookiecutter reads its questions from a static cookiecutter.json, so that file is made from
copier.yml: each question asked there (not `_`-prefixed, not `when: false`), in its order, with
its default (a `choices` question lists its default first, as cookiecutter expects), followed by
`__<question>_checked` when copier.yml validates it (hooks/check_answers.py runs copier's rule
as soon as the answer is given), then the Jinja extension and the prompts, from each `help`.

Run after changing a question in copier.yml: `.venv/bin/python scripts/cookiecutter_json.py`.
`--check` writes nothing and exits 1 when cookiecutter.json differs; tests/test_questions.py
checks the same.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for hooks/, which the cookiecutter door reads copier.yml with
from hooks.copier_yml import asked, load

COOKIECUTTER = ROOT / "cookiecutter.json"
COMMAND = ".venv/bin/python scripts/cookiecutter_json.py"
EXTENSION = "hooks.check_answers.CopierValidators"
# Continuation lines of a prompt, indented under cookiecutter's "  [1/8] " counter.
INDENT = " " * 8
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)


def _for_cookiecutter(text: str, names: list[str]) -> str:
    """A copier default's Jinja with each answer read from `cookiecutter.<name>`."""
    answer = re.compile(rf"(?<![\w.'\"])({'|'.join(map(re.escape, names))})\b")
    return JINJA.sub(lambda block: answer.sub(r"cookiecutter.\1", block.group()), text)


def _default(name: str, spec: dict[str, Any], names: list[str]) -> Any:
    value = spec.get("default", "")
    if isinstance(value, str):
        value = _for_cookiecutter(value, names)
    choices = spec.get("choices")
    if choices is None:
        return value
    if isinstance(choices, dict):  # copier's {label: value} form
        choices = list(choices.values())
    if value not in choices:
        raise SystemExit(f"copier.yml: {name}'s default {value!r} is not one of its choices")
    return [value, *(choice for choice in choices if choice != value)]


def _prompt(name: str, spec: dict[str, Any]) -> str:
    """The question's `help`, continuation lines re-indented and without their parentheses.

    Cookiecutter shows the default in parentheses after the prompt, so the prompt has none.
    """
    first, *rest = str(spec.get("help", name)).strip().splitlines()
    more = "\n".join(line.strip() for line in rest)
    if more.startswith("(") and more.endswith(")"):
        more = more[1:-1]
    return "\n".join([first, *(INDENT + line for line in more.splitlines())])


def generate(config: dict[str, Any]) -> str:
    """cookiecutter.json's text for copier.yml's parsed `config`."""
    names = asked(config)
    data: dict[str, Any] = {
        "_generated": "from copier.yml by scripts/cookiecutter_json.py: edit copier.yml, then run it",
    }
    for name in names:
        spec = config[name]
        data[name] = _default(name, spec, names)
        if "validator" in spec or "choices" in spec:
            data[f"__{name}_checked"] = f"{{{{ check_answer(cookiecutter, '{name}') }}}}"
    data["_extensions"] = [EXTENSION]
    data["__prompts__"] = {name: _prompt(name, config[name]) for name in names}
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if cookiecutter.json differs")
    args = parser.parse_args(argv)
    text = generate(load(ROOT))
    if args.check:
        if COOKIECUTTER.read_text(encoding="utf-8") != text:
            print(
                f"cookiecutter.json is not made from copier.yml: run `{COMMAND}`", file=sys.stderr
            )
            return 1
        return 0
    COOKIECUTTER.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
