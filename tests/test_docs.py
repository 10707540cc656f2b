"""The documentation's commands are runnable as written.

Every `python -m personabff ...` line in a bash block must be a real command of a generated
service, every `make TARGET` a real target, and the `copier copy` examples must render. And every
file of the product speaks of the product alone.
"""

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, assert_ok, render, run

# What a product file must not refer to: notes kept outside the product (its design of record is
# docs/design.md), the article it grew from, or issues (the verb, "issues a command", is fine).
ELSEWHERE = re.compile(
    r"\b(?:DESIGN|KAFKA|STYLE)\.md\b"
    r"|(?i:\bseed/|\bfrom the seed\b)"
    r"|(?i:\bissues?\b(?!\s+(?:a|an|the|its|one|commands?|events?|requests?|replies)\b))"
)
ALLOWED = {"tests/test_docs.py"}  # this file, which names them to find them
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PLACEHOLDER = "path/or/url/of/bff-template"


def _bash_lines(page: Path) -> list[str]:
    """Commands of the page's ```bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)
    return [
        line.split("  #")[0].strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip()
    ]


COMMANDS = [(page.name, line) for page in DOCS for line in _bash_lines(page)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("docs") / "personabff")


@pytest.mark.parametrize(
    ("page", "line"), [(p, line) for p, line in COMMANDS if line.startswith("python -m personabff")]
)
def test_service_commands_exist(service: Path, page: str, line: str) -> None:
    words = [w for w in shlex.split(line)[3:] if not w.startswith("-")]
    subcommands = [w for w in words if not w.isdigit()][:2]
    assert_ok(run(service, "personabff", *subcommands, "--help"))


@pytest.mark.parametrize(
    ("page", "line"), [(p, line) for p, line in COMMANDS if line.startswith("make ")]
)
def test_make_targets_exist(service: Path, page: str, line: str) -> None:
    target = shlex.split(line)[1]
    # The home page and README speak of the template repository; the others of a service.
    makefile = ROOT / "Makefile" if page in {"index.md", "README.md"} else service / "Makefile"
    dry = subprocess.run(
        ["make", "-n", target], cwd=makefile.parent, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, f"{page}: make {target}: {dry.stderr}"


@pytest.mark.parametrize(
    ("page", "line"),
    [(p, line) for p, line in COMMANDS if line.startswith("copier copy --defaults")],
)
def test_copier_examples_render(
    tmp_path: Path, template_snapshot: Path, page: str, line: str
) -> None:
    args = shlex.split(line.replace(PLACEHOLDER, str(template_snapshot)))
    args[-1] = str(tmp_path / args[-1])
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / shlex.split(line)[-1] / "pyproject.toml").exists()


def test_the_site_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    """Scripts and styles come with the site: it reads the same offline."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "--site-dir", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    pages = list(tmp_path.rglob("*.html"))
    assert pages
    for page in pages:
        tags = re.findall(r"<(?:script|link)\b[^>]*>", page.read_text())
        remote = [tag for tag in tags if re.search(r"""(src|href)=["']?(https?:)?//""", tag)]
        assert not remote, f"{page.relative_to(tmp_path)} loads {remote}"


def test_the_design_shows_the_redis_keys_as_the_keyspace_formats_them() -> None:
    path = ROOT / "template/src/{{package_name}}/runtime/keyspace.py"
    spec = importlib.util.spec_from_file_location("keyspace", path)
    assert spec is not None and spec.loader is not None
    keyspace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keyspace)  # it imports nothing of the service: no render needed
    design = (ROOT / "docs/design.md").read_text()
    section = design.split("## The read model in Redis", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.MULTILINE)
    assert rows == keyspace.layout()


def _product_files() -> list[str]:
    """Every file of the product: tracked, or new and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted({name for name in listed.stdout.split("\0") if name} - ALLOWED)


def test_the_product_refers_to_nothing_outside_itself() -> None:
    found = []
    for name in _product_files():
        path = ROOT / name
        if path.is_symlink() or not path.is_file():  # deleted, or a link to elsewhere (.venv)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # an image
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if ELSEWHERE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "refers to something outside the product:\n" + "\n".join(found)
