"""copier.yml as the cookiecutter door reads it: the one source of the template's questions.

Used by the cookiecutter hooks (from the copy of the template cookiecutter made) and by
scripts/cookiecutter_json.py, so the questions asked, and the Jinja their texts are rendered with,
are those copier itself uses.
"""

from pathlib import Path
from typing import Any

import yaml
from jinja2.sandbox import SandboxedEnvironment


def load(template: Path) -> dict[str, Any]:
    """The template's copier.yml, parsed."""
    config: dict[str, Any] = yaml.safe_load((template / "copier.yml").read_text(encoding="utf-8"))
    return config


def asked(config: dict[str, Any]) -> list[str]:
    """The questions copier.yml asks (not `_`-prefixed, not `when: false`), in its order."""
    return [
        name
        for name, spec in config.items()
        if not name.startswith("_") and isinstance(spec, dict) and spec.get("when") is not False
    ]


def jinja(config: dict[str, Any]) -> SandboxedEnvironment:
    """A Jinja environment as copier renders copier.yml's texts: its filters and `_envops`."""
    return SandboxedEnvironment(
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
        **config.get("_envops", {}),
    )
