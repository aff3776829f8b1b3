"""`make demo`: the whole oncolens path on the phantoms it generates, printing each stage's summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

console = Console(width=120)


def stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    from oncolens.apps.cli import print_scan_summary
    from oncolens.data import generate_phantoms, leakage_report, load_manifest, save_manifest, split
    from oncolens.data.scan import scan_to_csv
    from oncolens.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stage("1. phantoms")
    data_dir = generate_phantoms(out / "phantoms", n=args.n, size=args.size, seed=0)
    console.print(f"{args.n} phantoms with lesion masks in {data_dir}")
    stage("2. scan")
    summary = scan_to_csv(data_dir, out / "manifest.csv")
    print_scan_summary(summary)
    stage("3. split (grouped by patient)")
    frame = split(load_manifest(out / "manifest.csv"), test=0.2, val=0.1, seed=42)
    save_manifest(frame, out / "splits.csv")
    console.print(frame.groupby(["label", "split"]).size().unstack(fill_value=0).to_string())
    console.print(leakage_report(frame).to_text(), markup=False, highlight=False)
    stage("4. train: frozen pretrained EfficientNet-Lite0 (cached features) and the seed 001 CNN")
    from oncolens.training import TrainConfig, train

    runs = {}
    for name, overrides in {
        "lite0_frozen": dict(model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen", head="seed004",
                             epochs=30, lr=1e-3, batch_size=32, augment=False, patience=5),
        "seed_cnn": dict(model="seed_cnn", weights="random", freeze="full", epochs=15, lr=1e-3, batch_size=32,
                         patience=4),
    }.items():
        run_dir = out / "runs" / name
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        runs[name] = train(TrainConfig(recipe="off", data=str(out / "splits.csv"), runs_dir=str(out / "runs"), name=name,
                                       cache_dir=str(out / "feature_cache"), seed=0, **overrides), console=console)
    for name, result in runs.items():
        console.print(f"[bold]{name}[/]: validation accuracy {result.val_accuracy:.3f} "
                      f"(best epoch {result.best_epoch}); bundle {result.bundle_path}")
    stage("5. evaluate on the held-out test split (patient-level bootstrap CIs) and write the HTML report")
    from oncolens.apps.cli import print_metrics
    from oncolens.evaluation import evaluate
    from oncolens.explain import evaluate_explanations, explain_panels

    reports = {}
    for name, result in runs.items():
        panels = explain_panels(result.bundle_path, out / "splits.csv", out / "eval" / name / "panels", per_class=2,
                                method="gradcam", split="test")
        evaluation = evaluate(result.bundle_path, out / "splits.csv", split="test", out_dir=out / "eval" / name,
                              explanations=[(f"Grad-CAM: {p.stem.removeprefix('panel_')}", p) for p in panels])
        console.print(f"[bold]{name}[/] on the test split:")
        print_metrics(evaluation.report)
        reports[name] = evaluation.report_html
    stage("6. how far can the heatmaps be trusted? (lesion masks of the tumour phantoms)")
    for name, result in runs.items():
        methods = ["gradcam", "gradcampp", "saliency"] if name == "seed_cnn" else ["gradcam"]
        table = evaluate_explanations(result.bundle_path, out / "splits.csv", methods=methods, split="test",
                                      n_images=12)
        console.print(f"[bold]{name}[/]")
        console.print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    stage("7. a 2 x 2 transfer matrix: a model per phantom family, tested on both (normal vs tumour)")
    from oncolens.studies import transfer_matrix

    transfer_matrix(out / "manifest.csv", out / "study-transfer", domain_col="organ",
                    train_config=TrainConfig(recipe="off", model="seed_cnn", epochs=8, lr=1e-3, batch_size=32, augment=False),
                    n_boot=200)
    console.print((out / "study-transfer" / "results.md").read_text(), markup=False, highlight=False)
    stage("8. a hierarchy: organ, then tumour or not (one classifier per organ), against one flat 4-class model")
    from oncolens.studies import hierarchy_study

    hierarchy_study(out / "manifest.csv", out / "study-hierarchy", levels=["organ", "tumor"], n_boot=200,
                    train_config=TrainConfig(recipe="off", model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen",
                                             head="seed004", epochs=30, lr=1e-3, batch_size=32, augment=False,
                                             patience=5, cache_dir=str(out / "feature_cache")))
    console.print((out / "study-hierarchy" / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"the routed predictor: oncolens app {out / 'study-hierarchy' / 'hierarchical_bundle'}")
    for name, path in reports.items():
        console.print(f"report ({name}): {path.resolve()}")
    console.print(f"\ndemo finished in {time.perf_counter() - start:.1f}s; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
