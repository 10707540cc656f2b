"""Format the template's plain Python files with ruff (and sort imports), through a rendering.

Files without the `.jinja` suffix are copied verbatim by copier, so formatting the rendered copy and
copying it back is exact; so is a `.jinja` file whose only Jinja is `{{ package_name }}`. Other
`.jinja` files are left alone: fix those by hand (the render tests say where).
Run: `.venv/bin/python scripts/format_template.py`.
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from copier import run_copy

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template"
CONDITION = re.compile(r"\{%.*?%\}")
PACKAGE = "{{ package_name }}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_copy(str(ROOT), tmp, defaults=True, vcs_ref="HEAD", quiet=True)
        ruff = [sys.executable, "-m", "ruff"]
        subprocess.run([*ruff, "check", "--fix-only", "-q", "--select", "I", tmp], check=True)
        subprocess.run([*ruff, "format", "-q", tmp], check=True)
        for source in TEMPLATE.rglob("*"):
            relative = str(source.relative_to(TEMPLATE)).replace("{{package_name}}", "personabff")
            rendered = Path(tmp) / CONDITION.sub("", relative).removesuffix(".jinja")
            if rendered.suffix != ".py" or not rendered.exists():
                continue
            text = source.read_text()
            if source.suffix == ".jinja":
                if "{%" in text or "{{" in text.replace(PACKAGE, ""):
                    continue
                formatted = rendered.read_text().replace("personabff", PACKAGE)
            else:
                formatted = rendered.read_text()
            if formatted != text:
                source.write_text(formatted)
                print(f"formatted {source.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
