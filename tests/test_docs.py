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


README = ROOT / "README.md"


def test_the_readme_is_short():
    """The README is the repository's front page: what oncolens is, install, the two commands, a short tour, and a
    pointer per topic into the docs, which hold everything else (issue 34)."""
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024, f"README.md is {len(text.encode())} bytes: move details into docs/guide/"
    sections = re.findall(r"^## (.+)$", text, re.M)
    for wanted in ("What it is", "Install", "The two commands", "A tour of the main commands", "Documentation"):
        assert wanted in sections, f"README.md has no '## {wanted}' section: {sections}"
    body = {title: part for title, part in zip(sections, re.split(r"^## .+$", text, flags=re.M)[1:])}
    assert "not a medical device" in text and "diagnosis" in text  # research use, said up front
    assert "What is run here, and what is not" in sections
    assert "pip install" in body["Install"]
    assert re.search(r"```bash\nmake demo\b[^\n]*\nmake test\b", body["The two commands"])
    tour = [line for line in re.findall(r"```bash\n(.*?)```", body["A tour of the main commands"], re.S)[0].splitlines()
            if line.startswith("oncolens ")]
    assert 8 <= len(tour) <= 12, tour
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert {"docs/getting-started.md", "docs/guide/index.md", "docs/guide/performance.md", "docs/results.md",
            "SECURITY.md"} <= set(local)
    for link in local:  # relative links, as GitHub resolves them
        assert (ROOT / link).is_file(), f"README.md links to {link}, which does not exist"
    for page in sorted((ROOT / "docs" / "guide").glob("*.md")):
        assert f"docs/guide/{page.name}" in local, f"README.md does not point to docs/guide/{page.name}"


def test_what_left_the_readme_is_in_the_user_guide():
    """The memory table, every benchmark and its command, and every guide page in the site's navigation."""
    guide = ROOT / "docs" / "guide"
    performance = (guide / "performance.md").read_text()
    assert "| command | peak memory (VmHWM) |" in performance and "benchmarks/bench_memory.py --demo" in performance
    for bench in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        assert f"benchmarks/{bench.name}" in performance, f"{bench.name}: no command on the performance page"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(guide.glob("*.md")):
        assert f"guide/{page.name}" in nav, f"docs/guide/{page.name} is not in mkdocs.yml's nav"
