"""MkDocs hook: pages made from the code, so the site cannot drift from it.

``reference/cli.md`` gets the command-line reference generated from the Typer app
(:func:`oncolens.apps.cli.reference.cli_reference`). The user guide (``guide/``) is written pages; the README
is a short front page for the repository that points into them, and is not part of the site.
"""

from __future__ import annotations


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        from oncolens.apps.cli.reference import cli_reference

        reference = cli_reference().split("\n", 1)[1]  # the page has its own title
        markdown = markdown.replace("<!-- cli-reference -->", reference)
    return markdown
