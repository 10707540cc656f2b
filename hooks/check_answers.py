"""A Jinja extension cookiecutter loads (`_extensions` in cookiecutter.json) to check each answer.

cookiecutter.json (made from copier.yml by scripts/cookiecutter_json.py) follows each validated
question with a private `__<question>_checked` variable, which cookiecutter renders as soon as the
question is answered: `{{ check_answer(cookiecutter, 'company') }}` runs the question's `validator` (and `choices`) from copier.yml, as copier would. A refused answer
stops cookiecutter at once with copier's one-line message, before anything is generated; cookiecutter
cannot ask the question again.
"""

import sys
from pathlib import Path
from typing import Any

import yaml
from cookiecutter.exceptions import FailedHookException
from jinja2 import Environment
from jinja2.ext import Extension

from hooks.copier_yml import jinja, load


def template_dir() -> Path:
    """The template being rendered: cookiecutter puts it last on sys.path while it asks."""
    for entry in reversed(sys.path):
        folder = Path(entry or ".")
        if (folder / "copier.yml").is_file() and (folder / "cookiecutter.json").is_file():
            return folder
    raise FailedHookException("error: cannot find copier.yml beside cookiecutter.json")


def refusal(config: dict[str, Any], name: str, answers: dict[str, Any]) -> str:
    """Copier's message for a refused answer, or "" when the answer is allowed."""
    question = config[name]
    value = answers[name]
    choices = [str(choice) for choice in question.get("choices", [])]
    if choices and str(value) not in choices:
        return f"{name} must be one of {', '.join(choices)}; got '{value}'"
    validator = question.get("validator")
    if not validator:
        return ""
    env = jinja(config)
    context = {
        key: yaml.safe_load(spec["default"]) if spec.get("type") == "yaml" else spec["default"]
        for key, spec in config.items()
        if isinstance(spec, dict) and spec.get("when") is False and "default" in spec
    }
    context.update({key: value for key, value in answers.items() if not key.startswith("_")})
    return " ".join(env.from_string(validator).render(context).split())


def check_answer(answers: dict[str, Any], name: str) -> str:
    """Empty if copier.yml allows `answers[name]`; otherwise stop cookiecutter with its message."""
    folder = template_dir()
    config = load(folder)
    message = refusal(config, name, dict(answers))
    if message:
        from hooks.pre_prompt import discard_temporary_copy

        discard_temporary_copy(folder)
        raise FailedHookException(f"error: Validation error for question '{name}': {message}")
    return ""


class CopierValidators(Extension):
    """Adds `check_answer(cookiecutter, name)` to cookiecutter's Jinja environment."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        # hooks/pre_prompt.py has checked this already, unless cookiecutter runs without hooks.
        from hooks.pre_prompt import minimum_copier, problem

        message = problem(minimum_copier(template_dir()))
        if message:
            raise FailedHookException(message)
        environment.globals["check_answer"] = check_answer
