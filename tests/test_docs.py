"""The README and docs say what the code does: the architecture map lists every module, links resolve, the README
stays a guide."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "graft"


def readme_map() -> dict[str, set[str]]:
    """{package folder or '*.py': module names} from the README's architecture block."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Architecture"):]
    block = block[block.index("```\n") + 4:]
    block = block[: block.index("```")]
    mapped: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines():
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if not line.startswith(" "):
            current, tokens = tokens[0], tokens[1:]
        mapped.setdefault(current, set()).update(tokens)
    return mapped


def code_map() -> dict[str, set[str]]:
    found = {"*.py": {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}}
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        found[f"{folder.name}/"] = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    return found


def test_the_readmes_architecture_map_lists_every_module_and_nothing_else():
    assert readme_map() == code_map()


def test_the_readme_is_a_guide_of_about_two_hundred_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md is {len(lines)} lines: measurements and detail belong in docs/"
    assert "make demo" in "\n".join(lines) and "make test" in "\n".join(lines)


def test_the_readmes_links_resolve():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_docs_build_with_no_broken_link(tmp_path):
    mkdocs = str(Path(sys.executable).parent / "mkdocs") if (Path(sys.executable).parent / "mkdocs").exists() \
        else shutil.which("mkdocs")
    assert mkdocs, "mkdocs is missing: it is in the test extra (pip install -e '.[test]')"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
