"""MkDocs hook: pages made from the code and from the README, so the site cannot drift from either.

``reference/cli.md`` gets the command-line reference generated from the Typer app
(:func:`oncolens.apps.cli.reference.cli_reference`); ``guide.md`` gets the README (the user guide), with its
links into ``docs/`` made relative to the site.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme() -> str:
    text = (ROOT / "README.md").read_text()
    text = text.split("\n", 1)[1]  # the page has its own title
    text = re.sub(r"\]\(docs/", "](", text)
    text = text.replace("](SECURITY.md)", "](security.md)")
    return text.strip() + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        from oncolens.apps.cli.reference import cli_reference

        reference = cli_reference().split("\n", 1)[1]  # the page has its own title
        markdown = markdown.replace("<!-- cli-reference -->", reference)
    if "<!-- readme -->" in markdown:
        markdown = markdown.replace("<!-- readme -->", _readme())
    return markdown
