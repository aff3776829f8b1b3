"""Commands that explain predictions: explain, explain-panels, explain-eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._base import app, console, fail, print_notes, renamed







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
    from oncolens.data.layouts import expand_image_paths
    from oncolens.explain import explain_to_files, list_methods

    methods = [m.strip() for m in method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in list_methods(None)]
    if unknown:
        fail(f"unknown method(s) {unknown}; available: {', '.join(list_methods(None))}")
    paths = expand_image_paths(images)
    records, failed = explain_to_files(bundle, paths, methods, out, target=target, target_layer=layer,
                                       threshold=threshold, percentile=percentile,
                                       opacity=renamed(opacity, alpha, "--alpha (heatmap opacity)", "--opacity"),
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
        from oncolens.files import atomic_write

        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
        console.print(f"table: {out}")
