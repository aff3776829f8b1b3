"""Commands that score images with a bundle: predict, slide, evaluate, stage, evaluate-ood, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from oncolens.files import atomic_write_json

from ._base import app, BACKEND_HELP, console, fail, join_ranks, perturbation_names, print_notes, relaunched






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
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
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
    from oncolens.data.layouts import expand_image_paths
    from oncolens.predictor import Predictor

    if relaunched(nproc) or _out_is_complete(out, resume, nproc):
        return
    dist = join_ranks(None)
    predictor = Predictor.from_bundle(bundle, backend=backend, onnx_path=onnx, batch_size=batch_size,
                                      num_workers=workers, tta=tta, alpha=alpha, detector=detector)
    streamed = out is not None and out.suffix in (".csv", ".jsonl")
    shown = _PredictionDisplay(predictor, top_k, show, keep=out is not None and not streamed)
    paths, resumed = expand_image_paths(images), 0
    if streamed:
        resumed = predictor.predict_to_file(paths, out, top_k, resume=resume, dist=dist, on_batch=shown.add).done_before
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


def _out_is_complete(out: Path | None, resume: bool, nproc: int | None) -> bool:
    """Check predict's --out against --resume and --nproc; whether a resumed --out is already complete."""
    streamed = out is not None and out.suffix in (".csv", ".jsonl")
    if out is not None and out.suffix not in (".csv", ".jsonl", ".json"):
        fail(f"--out must end in .csv, .jsonl or .json, got {out.name}")
    if (resume or (nproc or 1) > 1) and not streamed:
        fail("--resume and several processes write rows as they go: give --out a .csv or .jsonl file")
    if resume and out.exists() and not out.with_name(out.name + ".partial").exists():
        console.print(f"{out} is complete: nothing to resume")
        return True
    return False


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
        if not self.trusted:
            console.print("note: this bundle has no calibration (no prediction sets, no out-of-distribution check); "
                          "run `oncolens calibrate` on it")
        if predictor.passes > 1:
            console.print(f"test-time augmentation {predictor.tta!r}: {predictor.passes} forward passes per image")

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
    from oncolens.data.slides import slide_name
    from oncolens.evaluation.slides import score_slide
    from oncolens.explain.panels import top_tile_panel
    from oncolens.files import safe_name
    from oncolens.models import load_any_bundle

    loaded = load_any_bundle(bundle)
    table = Table(title=f"{len(slides)} slide(s)")
    for col in ("slide", "tiles", "tissue", "mean", "top-k mean", "tissue above", "unlike training"):
        table.add_column(col)
    for path in slides:
        result = score_slide(loaded, path, out / safe_name(slide_name(path)), mpp=mpp or None, slide_mpp=slide_mpp,
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
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="image-decoding worker processes (default: from the "
                                                   "core count)")] = None,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: none, flip, dihedral (default: the "
                                               "bundle's)")] = None,
    perturb: Annotated[Optional[str], typer.Option(help="robustness check: perturb every image before scoring "
                                                   f"({', '.join(perturbation_names())})")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="error rate of the prediction sets whose coverage is "
                                                   "reported (default: the bundle's)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed evaluation in --out after the images "
                                         "already scored (<out>/scores.jsonl)")] = False,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="score with N processes on this machine (through "
                                                 "torchrun; rank 0 measures and writes)")] = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="keep the headline numbers in the bundle's "
                                         "model card (with --perturb: as robustness)")] = True,
) -> None:
    """Evaluate a bundle on a manifest: metrics with 95% CIs, plots, error gallery, report.html; for a
    calibrated bundle also the prediction sets' coverage and the share flagged out of distribution.
    Images are scored batch by batch into <out>/scores.jsonl (bounded memory, resumable)."""
    from oncolens.evaluation import evaluate as run_evaluation

    if relaunched(nproc):
        return
    dist = join_ranks(None)
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
                            perturb=perturb, alpha=alpha, resume=resume, distributed=dist, record=record)
    if result is None:  # another rank: rank 0 reports
        return
    print_metrics(result.report)
    _print_levels_and_trust(result)
    print_notes(result.notes)
    console.print(f"metrics: {result.metrics_json}")
    console.print(f"report: {result.report_html}")


def _print_levels_and_trust(result) -> None:
    """An evaluation's per-level table (hierarchical bundles) and prediction-set / OOD lines (calibrated)."""
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
        if "shift" in result.trust:  # how far these images are from the training data
            from oncolens.evaluation.shift import ShiftReport

            for line in ShiftReport(**result.trust["shift"]).lines():
                console.print(line, markup=False, highlight=False)


@app.command()
def features(
    inputs: Annotated[Path, typer.Argument(help="manifest CSV (path, label, group) or a folder of slides/images "
                                                "(labelled by their parent folder)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder of bag files, with bags.csv")] = Path("bags"),
    bundle: Annotated[Optional[Path], typer.Option(help="extract with this flat bundle's backbone")] = None,
    model: Annotated[str, typer.Option(help="or with this registered model")] = "tf_efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="... and these weights")] = "imagenet",
    input_size: Annotated[Optional[int], typer.Option(help="... at this input side (default: the model's)")] = None,
    size: Annotated[int, typer.Option(help="instance side in pixels")] = 224,
    mpp: Annotated[float, typer.Option(help="slides: microns per pixel of the instances (0: level 0)")] = 0.5,
    min_tissue: Annotated[float, typer.Option(help="slides: least tissue share of a tile")] = 0.5,
    whole: Annotated[bool, typer.Option("--whole/--no-whole", help="images: the whole image as one more "
                                        "instance beside the native-resolution crops")] = True,
    batch_size: Annotated[int, typer.Option(help="instances per batch")] = 32,
    workers: Annotated[Optional[int], typer.Option(help="image-decoding worker processes")] = None,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="extract with N processes (each its share of "
                                                 "the inputs)")] = None,
) -> None:
    """Bags for multiple-instance learning: each slide (its tissue tiles at --mpp) or large image (a grid of
    native-resolution crops) as one file of instance features (safetensors), and bags.csv for `train`.
    A rerun continues: bags already made by this extractor are kept."""
    from oncolens.models.bags import BagConfig, bag_inputs, load_extractor, make_bags

    if relaunched(nproc):
        return
    dist = join_ranks(None)
    extractor = load_extractor(bundle=bundle, model=model, weights=weights, input_size=input_size)
    config = BagConfig(size=size, mpp=None if mpp == 0 else mpp, min_tissue=min_tissue, whole=whole)
    manifest, failed = make_bags(bag_inputs(inputs), out, extractor, config, batch_size=batch_size,
                                 num_workers=workers, dist=dist)
    for source, reason in failed.items():
        console.print(f"skipped {source}: {reason}", markup=False, highlight=False)
    if dist.is_main:
        from oncolens.data import save_manifest

        if not len(manifest):
            fail(f"no bag could be made ({len(failed)} input(s) skipped, reasons above)")
        save_manifest(manifest, out / "bags.csv")
        console.print(f"{len(manifest)} bag(s) in {out}; manifest: {out / 'bags.csv'}")


@app.command()
def check(
    bundle: Annotated[Path, typer.Argument(help="calibrated bundle folder")],
    inputs: Annotated[Path, typer.Argument(help="folder of new images, or a manifest CSV (no labels needed)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the report as JSON")] = None,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 8,
    workers: Annotated[Optional[int], typer.Option(help="image-decoding worker processes")] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """How far new images are from the bundle's training data: nearest training image against the held-out
    calibration images', a two-sample test on features, the out-of-distribution flag rate against its
    expected rate and the predicted class mix; a verdict and what to do. Exit code 3 when shifted."""
    from oncolens.evaluation.shift import check_new_data

    report = check_new_data(bundle, inputs, batch_size=batch_size, num_workers=workers, backend=backend)
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    if out:
        atomic_write_json(out, report.to_dict())
        console.print(f"report: {out}")
    if report.verdict.startswith("shifted"):
        raise typer.Exit(3)


@app.command("stage")
def tnm_stage_command(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV with a TNM (or stage) column")],
    tnm_col: Annotated[str, typer.Option(help="column of TNM strings such as 'T2 N1 M0'")] = "tnm",
    rule: Annotated[str, typer.Option(help="ajcc (0, I-IV; simplified) or generic (seed 003: 0, I-III, IV)")] = "ajcc",
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest with a 'stage' column")] = Path("staged.csv"),
) -> None:
    """Add a 'stage' column from TNM strings, to train a staging classifier with --label-col stage."""
    from oncolens.data import load_manifest, save_manifest
    from oncolens.staging import tnm_stage_column

    frame = load_manifest(manifest)
    if tnm_col not in frame.columns:
        fail(f"column {tnm_col!r} not in the manifest ({list(frame.columns)})")
    frame["stage"], problems = tnm_stage_column(frame[tnm_col], rule)
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
    from oncolens.evaluation.trust import evaluate_ood as ood_evaluation

    sets = {}
    for item in ood:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).stem, "", item)
        sets[name or Path(path).stem] = Path(path)
    summary = ood_evaluation(bundle, in_data, sets, out, split=None if split == "all" else split)
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
