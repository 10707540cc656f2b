"""Format the template's plain Python files with ruff, through a rendering.

Files without the `.jinja` suffix are copied verbatim by copier, so formatting the rendered copy and
copying it back is exact. `.jinja` files are left alone: fix those by hand (the render tests say
where). Run: `.venv/bin/python scripts/format_template.py`.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from copier import run_copy

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template"
CONDITION = re.compile(r"\{%.*?%\}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_copy(str(ROOT), tmp, defaults=True, vcs_ref="HEAD", quiet=True)
        subprocess.run([sys.executable, "-m", "ruff", "format", "-q", tmp], check=True)
        for source in TEMPLATE.rglob("*.py"):
            relative = str(source.relative_to(TEMPLATE)).replace("{{package_name}}", "personabff")
            rendered = Path(tmp) / CONDITION.sub("", relative)
            if rendered.exists() and rendered.read_bytes() != source.read_bytes():
                shutil.copyfile(rendered, source)
                print(f"formatted {source.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
