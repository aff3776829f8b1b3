"""Docs that run: every ``bash`` and ``python`` block of the getting-started page and the tutorials is executed,
in order, in one fresh folder per page (later blocks see what earlier ones wrote), with this environment's
``oncolens`` and Python first on the PATH. A block preceded by ``<!-- not run: reason -->`` is shown, not run
(installing packages, starting servers, the minutes-long demo); a page may say ``<!-- needs: module -->`` to be
skipped when an optional extra is missing. The site itself must build with ``mkdocs build --strict``."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "getting-started.md", *sorted((ROOT / "docs" / "tutorials").glob("*.md"))]
FENCE = re.compile(r"(?P<before>(?:<!--[^\n]*-->\n)?)```(?P<lang>bash|python)\n(?P<code>.*?)\n```", re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>[^>]+?)\s*-->")


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, why it is not run or None) for every fenced bash/python block of ``page``."""
    out = []
    for match in FENCE.finditer(page.read_text()):
        skipped = NOT_RUN.search(match["before"])
        out.append((match["lang"], match["code"], skipped["why"] if skipped else None))
    return out


def test_the_runner_finds_the_blocks_and_honours_not_run(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```bash\necho one\n```\n\n<!-- not run: a server -->\n```bash\noncolens serve x\n```\n"
                    "\n```python\nprint(2)\n```\n\n```text\nnot code\n```\n")
    assert blocks(page) == [("bash", "echo one", None), ("bash", "oncolens serve x", "a server"),
                            ("python", "print(2)", None)]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_page_has_runnable_blocks(page):
    runnable = [b for b in blocks(page) if b[2] is None]
    assert runnable, f"{page.name} has no block that runs"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_run(page, tmp_path):
    for module in re.findall(r"<!--\s*needs:\s*([\w.]+)\s*-->", page.read_text()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{page.name} needs {module} (an optional extra)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    for number, (lang, code, why) in enumerate(blocks(page), start=1):
        if why is not None:
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{page.name}, block {number} ({lang}) failed with {done.returncode}:\n{code}\n"
                                      f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}")


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs extra (mkdocs, mkdocs-material, mkdocstrings) is not installed")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "oncolens card" in cli and "--intended-use" in cli  # generated from the app, not written by hand
