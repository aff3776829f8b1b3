"""What every command shares: the typer app, its console, the one user-error exit, option helpers."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup, TyperOption

from oncolens.data.limits import LIMITS, check_count
from oncolens.errors import OncolensError


class UserErrors(TyperGroup):
    """Every command's user errors (:class:`OncolensError`) become one clear line and exit code 2;
    any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OncolensError as exc:
            fail(str(exc))


def limit_name(param) -> str | None:
    """The :data:`~oncolens.data.limits.LIMITS` entry an option is checked against (its long name: ``--batch-size``
    is ``batch_size``), or None."""
    if not isinstance(param, TyperOption):
        return None
    flag = next((o for o in param.opts if o.startswith("--")), "")
    name = flag[2:].replace("-", "_")
    return name if name in LIMITS else None


class CheckedCommand(TyperCommand):
    """A command whose size and count options (every one named in :data:`~oncolens.data.limits.LIMITS`) are
    checked before it runs: ``--size 0`` or ``--batch-size 100000`` is one clear error, never a traceback or an
    allocation."""

    def invoke(self, ctx):
        for param in self.params:
            name = limit_name(param)
            # only numbers: an option may share a count's name (`app --slides` is a folder, `phantoms --slides` a count)
            if name and isinstance(ctx.params.get(param.name), (int, float)):
                ctx.params[param.name] = check_count(ctx.params[param.name], name, param.opts[0])
        return super().invoke(ctx)


class Commands(typer.Typer):
    """A typer app whose commands are :class:`CheckedCommand`."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", CheckedCommand)
        return super().command(*args, **kwargs)


app = Commands(
    name="oncolens",
    help="Train, evaluate and explain deep-learning classifiers for cancer images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=UserErrors,
)
# piped output keeps whole names and tables at their natural width (a terminal wraps to its own width)
console = Console(width=None if sys.stdout.isatty() else 100_000)
BACKEND_HELP = "auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or onnx"


@app.callback()
def _setup() -> None:
    """Train, evaluate and explain deep-learning classifiers for cancer images."""
    from oncolens.runtime import tune_cpu_runtime

    tune_cpu_runtime()


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no stack trace) and exit."""
    console.print(Text.assemble(("error:", "bold red"), " ", message))
    raise typer.Exit(code)


#: one meaning of --workers everywhere (processes or threads that read and decode images); runs in parallel
#: are --jobs. Old spellings stay accepted for one release, hidden, with a warning.
Jobs = Annotated[int, typer.Option("--jobs", "-j", help="runs trained in parallel (one process each)")]
OldWorkers = Annotated[Optional[int], typer.Option("--workers", hidden=True, help="deprecated spelling of --jobs")]


def renamed(new_value, old_value, old: str, new: str):
    """The value of an option given under its old name (with a deprecation warning, checked as the new one
    when that is a size or count), else the new one's."""
    if old_value is None:
        return new_value
    if new[2:].replace("-", "_") in LIMITS:
        check_count(old_value, new[2:].replace("-", "_"), f"{old} (the old spelling of {new})")
    Console(stderr=True).print(Text.assemble(("warning:", "yellow"), f" {old} is now {new} here; the old "
                                             "spelling goes in the next release"))
    return old_value


def print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"))


def print_scan_summary(summary) -> None:
    data = summary.to_dict()
    table = Table(title=f"{data['n_images']} images, layout '{data['layout']}', {data['n_groups']} patient groups")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in data["class_counts"].items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(f"sizes ({data['n_distinct_sizes']} distinct): " + ", ".join(f"{k} x{v}" for k, v in data["sizes"].items()))
    console.print("modes: " + ", ".join(f"{k} x{v}" for k, v in data["modes"].items()))
    for folder in data["empty_class_folders"]:
        console.print(f"[yellow]empty folder:[/] {folder}")
    if data["skipped"]:
        console.print(f"[yellow]skipped {len(data['skipped'])} file(s):[/]")
        for item in data["skipped"]:
            console.print(f"  {item['path']}: {item['reason']}", markup=False, highlight=False)
    else:
        console.print("skipped: none")


def config_options(config_class, skip: tuple[str, ...] = (), defaults: dict | None = None) -> list[inspect.Parameter]:
    """One ``--flag`` per field of a configuration dataclass (its type, its help text from the field's
    metadata, default None so that a YAML file or the dataclass default applies): the flags and the
    configuration are one list of fields. ``defaults``: the command's own defaults, shown in the help."""
    hints = typing.get_type_hints(config_class)
    params = []
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        base = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        dashed = f.name.replace("_", "-")
        shown = f.metadata.get("shown", "model's") if f.default is None else f.default
        shown = (defaults or {}).get(f.name, shown)
        text = f"{f.metadata.get('help', '')} [default: {shown}]"
        option = (typer.Option(f"--{dashed}/--no-{dashed}", help=text, show_default=False) if base is bool
                  else typer.Option(f"--{dashed}", help=text, show_default=False))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[base], option]))
    return params


def with_options(extra: list[inspect.Parameter]):
    """Give a ``**options`` command the extra keyword parameters (typer reads the signature)."""
    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = signature.replace(parameters=fixed + extra)
        fn.__annotations__ = {**{p.name: p.annotation for p in fixed + extra}, "return": signature.return_annotation}
        return fn

    return decorate


def perturbation_names() -> list[str]:
    from oncolens.data.perturb import PERTURBATIONS

    return list(PERTURBATIONS)


def train_config_class():
    from oncolens.training import TrainConfig

    return TrainConfig


def relaunched(nproc: int | None) -> bool:
    """With ``--nproc N`` (N > 1) outside torchrun: this command line ran as N ranks through torchrun, and
    failed with its exit code or succeeded (True: nothing more to do here)."""
    from oncolens.distributed import launch, under_torchrun, without_nproc

    if not nproc or nproc <= 1 or under_torchrun():
        return False
    argv = without_nproc(sys.argv[1:])
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    if not argv or argv[0] not in commands:
        fail("--nproc re-runs the command line through torchrun: use it from the `oncolens` command")
    code = launch(nproc, argv)
    if code:
        raise typer.Exit(code)
    return True


def join_ranks(device: str | None):
    """This process's place among torchrun's ranks (a single process: rank 0 of 1); other ranks print nothing."""
    from oncolens.distributed import join_process_group

    dist = join_process_group(device)
    if not dist.is_main:
        console.quiet = True
    return dist
