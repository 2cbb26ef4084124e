"""Every ```python block of README.md (and of any docs/*.md) runs as written: the
examples a student copies first cannot drift from the code. Each block runs in a
fresh namespace, in a temporary folder (what it writes stays there)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path):
    """(name, code) of each ```python block of a Markdown file, named by its line."""
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        yield f"{path.name}:{line}", match.group(1)


BLOCKS = [block for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
          if page.is_file() for block in python_blocks(page)]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_block_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": "__readme__"})
