"""The command-line reference as Markdown, generated from the Typer app itself (the docs site's
``reference/cli.md``), so that it cannot drift from the options the commands take."""

from __future__ import annotations

from typing import Any

__all__ = ["cli_reference"]


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or callable(value) or (isinstance(value, (tuple, list)) and not value):
        return ""
    if isinstance(value, bool) and getattr(param, "secondary_opts", None):
        return f"`{(param.opts if value else param.secondary_opts)[0]}`"
    return f"`{value}`"


def _command(path: list[str], command: Any, out: list[str]) -> None:
    # duck-typed: typer builds its commands on its own copy of click
    name = " ".join(path)
    ctx = command.context_class(command, info_name=name)
    help_text = (command.help or "").strip()
    out += [f"## {name}" if len(path) > 1 else f"# {name}", "", *([help_text, ""] if help_text else []),
            "```text", f"Usage: {name} {' '.join(command.collect_usage_pieces(ctx))}", "```", ""]
    if hasattr(command, "commands"):
        for sub_name, sub in command.commands.items():
            if not getattr(sub, "hidden", False):
                _command([*path, sub_name], sub, out)
        return
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    if arguments:
        out += ["| argument | help | |", "| --- | --- | --- |"]
        out += [f"| `{p.name.upper()}` | {_cell(getattr(p, 'help', '') or '')} | {_default(p)} |"
                for p in arguments]
        out.append("")
    if options:
        out += ["| option | help | default |", "| --- | --- | --- |"]
        for p in options:
            names = " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            out.append(f"| {names} | {_cell(p.help or '')} | {_default(p)} |")
        out.append("")


def cli_reference() -> str:
    """Every command of ``oncolens`` (and of its sub-groups) with its help, usage, arguments and options."""
    import typer

    from . import app

    out: list[str] = []
    group = typer.main.get_command(app)
    _command(["oncolens"], group, out)
    return "\n".join(out) + "\n"
