"""The ``oncolens`` command line: a thin layer that parses options and calls the package."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="oncolens",
    help="Train, evaluate and explain deep-learning classifiers for cancer images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no stack trace) and exit."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


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


@app.command()
def scan(
    data_dir: Annotated[Path, typer.Argument(help="dataset folder, or a CSV file for --layout csv")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest CSV to write")] = Path("manifest.csv"),
    layout: Annotated[str, typer.Option(help="auto, folder, breakhis, idc, csv, phantoms")] = "auto",
    exclude: Annotated[Optional[list[str]], typer.Option(help="folder name to leave out (repeatable), e.g. ALL")] = None,
    group_regex: Annotated[Optional[str], typer.Option(help="regex whose match in a filename is the patient id")] = None,
    path_col: Annotated[str, typer.Option(help="csv layout: column with image paths")] = "path",
    label_col: Annotated[str, typer.Option(help="csv layout: column with labels")] = "label",
    group_col: Annotated[Optional[str], typer.Option(help="csv layout: column with patient ids")] = None,
    levels: Annotated[Optional[str], typer.Option(help="names of nested folder levels, comma-separated")] = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="also write the summary as JSON")] = None,
    workers: Annotated[int, typer.Option(help="decoding threads")] = 2,
) -> None:
    """Scan a dataset into a manifest CSV; print a summary and every skipped file with its reason."""
    from oncolens.data import LayoutOptions
    from oncolens.data.scan import scan_to_csv

    options = LayoutOptions(
        exclude=tuple(exclude or ()), group_regex=group_regex, path_col=path_col, label_col=label_col,
        group_col=group_col, level_names=tuple(levels.split(",")) if levels else None,
    )
    try:
        summary = scan_to_csv(data_dir, out, layout, options, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    print_scan_summary(summary)
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    console.print(f"manifest: {out}")
    if summary.n_images == 0:
        fail("no usable images found", code=1)


@app.command()
def split(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV from `oncolens scan`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest CSV with a split column")] = Path("splits.csv"),
    test: Annotated[float, typer.Option(help="fraction held out for testing")] = 0.2,
    val: Annotated[float, typer.Option(help="fraction held out for validation")] = 0.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    label_col: Annotated[str, typer.Option(help="column to stratify on")] = "label",
    group_col: Annotated[str, typer.Option(help="patient column; 'auto' uses group/patient when present; 'none' splits by image")] = "auto",
    near_threshold: Annotated[int, typer.Option(help="max perceptual-hash distance of a near duplicate")] = 4,
    report: Annotated[Optional[Path], typer.Option(help="write the leakage report (CSV of duplicate pairs)")] = None,
) -> None:
    """Split a manifest into train/val/test: stratified, grouped by patient, deterministic; report leakage."""
    import pandas as pd

    from oncolens.data import SplitError, leakage_report, load_manifest, save_manifest
    from oncolens.data import split as split_manifest

    try:
        frame = load_manifest(manifest)
        result = split_manifest(frame, test=test, val=val, seed=seed, label_col=label_col,
                                group_col=None if group_col == "none" else group_col)
    except (SplitError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    save_manifest(result, out)
    table = Table(title=f"split of {len(result)} images (grouped by: {result.attrs.get('group_col') or 'image'})")
    counts = pd.crosstab(result[label_col], result["split"])
    table.add_column(label_col)
    for col in counts.columns:
        table.add_column(col, justify="right")
    for name, row in counts.iterrows():
        table.add_row(str(name), *(str(v) for v in row))
    table.add_row("[bold]total", *(f"[bold]{v}" for v in counts.sum()))
    console.print(table)
    leak = leakage_report(result, near_threshold=near_threshold, label_col=label_col)
    console.print(leak.to_text(), markup=False, highlight=False)
    if report:
        pairs = pd.concat([leak.exact.assign(kind="exact"), leak.near.assign(kind="near")], ignore_index=True)
        save_manifest(pairs, report)
        console.print(f"leakage report: {report}")
    console.print(f"splits: {out}")


@app.command()
def phantoms(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the phantom dataset into")],
    n: Annotated[int, typer.Option(help="number of images")] = 200,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    per_patient: Annotated[int, typer.Option(help="images per synthetic patient")] = 4,
) -> None:
    """Generate synthetic histology and MRI phantoms (tumour / normal) with lesion masks."""
    from oncolens.data import generate_phantoms

    try:
        generate_phantoms(out_dir, n=n, size=size, seed=seed, per_patient=per_patient)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"wrote {n} phantoms ({size}px, seed {seed}) with lesion masks to {out_dir}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
