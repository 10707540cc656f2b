"""Every copier question refuses a bad answer with a message saying what is allowed.

copier.yml is the one source of the questions: cookiecutter.json is made from it.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from .helpers import ROOT


def _script(name: str) -> ModuleType:
    """A module of scripts/, which is not a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copier_copy(dest: Path, *data: str) -> subprocess.CompletedProcess[str]:
    args = [arg for item in data for arg in ("--data", item)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--defaults",
            "--vcs-ref",
            "HEAD",
            *args,
            str(ROOT),
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("company=Arcadia", "company must be lowercase letters and digits, starting with a letter"),
        ("company=9lives", "company must be lowercase letters and digits"),
        ("company=" + "a" * 21, "company must be at most 20 characters; got 21"),
        ("namespace=id-entity", "namespace must be lowercase letters and digits"),
        ("namespace=" + "n" * 21, "namespace must be at most 20 characters"),
        ("service_name=persona_bff", "service_name must be lowercase letters and digits"),
        ("service_name=" + "s" * 31, "service_name must be at most 30 characters"),
        ("service_name=import", "'import' is a Python keyword or shadows a module"),
        ("service_name=redis", "'redis' is a Python keyword or shadows a module"),
        ("upstream_service=Persona", "upstream_service must be lowercase letters and digits"),
        ("upstream_service=personabff", "upstream_service must differ from service_name"),
        ("upstream_service=" + "u" * 31, "upstream_service must be at most 30 characters"),
        ("description=   ", "description must not be empty"),
        ("python_version=3.10", "3.11"),
    ],
)
def test_bad_answer_is_refused_with_what_is_allowed(
    tmp_path: Path, answer: str, message: str
) -> None:
    dest = tmp_path / "service"
    result = copier_copy(dest, answer)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output
    assert not (dest / "pyproject.toml").exists()


def test_good_answers_are_accepted(tmp_path: Path) -> None:
    result = copier_copy(
        tmp_path / "service",
        "company=acme",
        "namespace=sales",
        "service_name=orderbff2",
        "upstream_service=orders",
        "python_version=3.13",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "service/src/orderbff2/settings.py").exists()


def test_every_prompt_names_its_question_and_what_it_allows() -> None:
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    cookiecutter = json.loads((ROOT / "cookiecutter.json").read_text())
    asked = [
        name
        for name, spec in config.items()
        if not name.startswith("_") and isinstance(spec, dict) and spec.get("when") is not False
    ]
    assert sorted(cookiecutter["__prompts__"]) == sorted(asked)
    for name in asked:
        validator = config[name].get("validator", "")
        for prompt in (config[name]["help"], cookiecutter["__prompts__"][name]):
            assert prompt.startswith(f"{name}: "), prompt
            if "regex_search('^[a-z][a-z0-9]*$')" in validator:
                assert "lowercase letters and digits, starting with a letter" in prompt
            for limit in re.findall(r"length > (\d+)", validator):
                assert f"at most {limit}" in prompt
        # cookiecutter checks the answer with copier's rule right after asking it
        if validator or "choices" in config[name]:
            keys = list(cookiecutter)
            assert keys[keys.index(name) + 1] == f"__{name}_checked"


def test_cookiecutter_json_is_made_from_copier_yml() -> None:
    script = _script("cookiecutter_json")
    made = script.generate(yaml.safe_load((ROOT / "copier.yml").read_text()))
    committed = (ROOT / "cookiecutter.json").read_text()
    assert committed == made, (
        f"cookiecutter.json is not what copier.yml makes: run `{script.COMMAND}` and commit it"
    )
