"""How well a bundle's prediction sets and OOD detector hold on a test split (evaluate) and how well the
detectors separate in- from out-of-distribution images (evaluate-ood)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ..models.scoring import Scores
from ..models.trust import CONFORMAL_SCORES, Trust, conformal_quantile

__all__ = ["coverage_report", "ood_metrics", "evaluate_ood", "plot_ood_histograms"]


def coverage_report(trust: Trust, scores: Scores, y: np.ndarray, alpha: float | None = None, repeats: int = 100,
                    seed: int = 0, ood_values: np.ndarray | None = None) -> dict:
    """Empirical coverage, mean set size, class-conditional coverage (worst class) and coverage by set size
    on these test rows, for every calibrated score; and the spread of coverage over ``repeats`` random
    re-splits of calibration + test images into parts of the original sizes; and how many test images the
    default detector flags as out of distribution (about 1 - its in-distribution recall if all is well;
    ``ood_values``: its scores of these rows when already computed, else from ``scores``' features)."""
    alpha = trust.default_alpha if alpha is None else alpha
    out: dict = {"alpha": alpha, "mondrian": trust.mondrian, "default_score": trust.default_score, "scores": {}}
    rng = np.random.default_rng(seed)
    if trust.conformal is not None and len(y):
        cal = trust.conformal
        for name in cal.scores:
            sets = cal.sets(scores.probabilities, name, alpha, trust.mondrian)
            hit = sets[np.arange(len(y)), y]
            sizes = sets.sum(1)
            per_class = {scores.classes[c]: float(hit[y == c].mean()) for c in np.unique(y)}
            by_size = {int(k): {"images": int((sizes == k).sum()), "coverage": float(hit[sizes == k].mean())}
                       for k in np.unique(sizes)}
            # re-splits: the calibration images' and these test images' true-label scores, pooled and re-dealt
            test_scores = CONFORMAL_SCORES[name](scores.probabilities, cal.params.get(name, {}))[np.arange(len(y)), y]
            pooled = np.r_[cal.scores[name], test_scores]
            n_cal = len(cal.scores[name])
            coverages = []
            for _ in range(repeats if not trust.mondrian else 0):
                order = rng.permutation(len(pooled))
                threshold = conformal_quantile(pooled[order[:n_cal]], alpha)
                coverages.append(float((pooled[order[n_cal:]] <= threshold).mean()))
            out["scores"][name] = {
                "coverage": float(hit.mean()), "mean_set_size": float(sizes.mean()),
                "empty_sets": int((sizes == 0).sum()), "class_coverage": per_class,
                "worst_class_coverage": float(min(per_class.values())), "coverage_by_set_size": by_size,
                "resplit_coverage_mean": float(np.mean(coverages)) if coverages else None,
                "resplit_coverage_sd": float(np.std(coverages, ddof=1)) if len(coverages) > 1 else None,
                "resplits": len(coverages)}
    detector = trust.default_detector
    if detector in trust.detectors and len(y):
        values = ood_values if ood_values is not None else trust.default_ood_values(scores)
        if values is not None:
            out["ood"] = {"detector": detector, "threshold": trust.thresholds[detector],
                          "flagged_fraction": float((values > trust.thresholds[detector]).mean()),
                          "expected_fraction": 1 - trust.id_recall}
    return out


def ood_metrics(inside: np.ndarray, outside: np.ndarray, threshold: float | None = None) -> dict:
    """Detector scores of in-distribution (``inside``) against out-of-distribution (``outside``) images, OOD
    being the positive class: AUROC, AUPR, the FPR at 95% TPR (share of in-distribution images flagged when
    95% of OOD images are), and at the bundle's ``threshold`` the shares detected and kept."""
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    values = np.r_[inside, outside]
    # FPR at 95% TPR: the share of in-distribution images scored above the score that catches 95% of OOD ones
    cut = np.quantile(outside, 0.05, method="lower")
    out = {"auroc": float(roc_auc_score(labels, values)), "aupr_out": float(average_precision_score(labels, values)),
           "fpr_at_95_tpr": float((inside >= cut).mean()), "in_images": int(len(inside)),
           "ood_images": int(len(outside))}
    if threshold is not None:
        out.update(threshold=float(threshold), ood_detected=float((outside > threshold).mean()),
                   in_kept=float((inside <= threshold).mean()))
    return out


def plot_ood_histograms(scores: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float], out: Path) -> Path:
    """One panel per detector: score histograms of the in-distribution set and every OOD set."""
    from ..figures import save_figure, subplots

    names = list(scores)
    fig, axes = subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        every = np.concatenate(list(scores[name].values()))
        bins = np.linspace(np.percentile(every, 0.5), np.percentile(every, 99.5), 40)
        for label, values in scores[name].items():
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True, label=label)
        if name in thresholds:
            ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(name)
        ax.set_xlabel("score (higher = more unusual)")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, out)
    return out


def _inputs(source, split: str | None) -> list[str]:
    """Image paths of a manifest (its ``split`` rows when it has that column) or of a folder of images."""
    from ..data import load_manifest
    from ..data.layouts import iter_image_files
    from ..errors import InputNotFound

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return [str(p) for p in iter_image_files(Path(source))]
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise InputNotFound(f"not found: {source}")
    frame = source if not isinstance(source, (str, Path)) else load_manifest(source)
    if split and "split" in frame.columns and (frame["split"] == split).any():
        frame = frame[frame["split"] == split]
    return frame["path"].astype(str).tolist()


def evaluate_ood(bundle, in_data, ood: dict, out_dir: str | Path, split: str | None = "test",
                 batch_size: int = 32, num_workers: int | None = None) -> dict:
    """Every fitted detector of a calibrated ``bundle`` on in-distribution images (``in_data``'s ``split``
    rows) against each named OOD set (manifests or folders): AUROC, FPR at 95% TPR, AUPR, and the rates at
    the bundle's thresholds; written as ``ood_metrics.json``, ``ood_histograms.png`` and ``report.html``."""
    import html

    from ..errors import DataError
    from ..files import atomic_write_json, atomic_write_text
    from ..models import as_bundle

    loaded = as_bundle(bundle)
    trust = loaded.trust
    if trust is None or not trust.detectors:
        raise DataError(f"{loaded.path}: no OOD detectors in this bundle; run `oncolens calibrate` on it first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"features": True, "batch_size": batch_size, "num_workers": num_workers}

    def detector_scores(paths: list[str], what: str) -> dict[str, np.ndarray]:
        if not paths:
            raise DataError(f"no images in {what}")
        scored = loaded.score(paths, **options)
        if not len(scored):
            raise DataError(f"no readable image in {what}")
        return {name: trust.detector_values(scored, name, strict=True) for name in trust.detectors}

    inside = detector_scores(_inputs(in_data, split), "the in-distribution set")
    sets = {name: detector_scores(_inputs(source, None), f"OOD set {name}") for name, source in ood.items()}
    results = {detector: {name: ood_metrics(inside[detector], values[detector], trust.thresholds.get(detector))
                          for name, values in sets.items()} for detector in trust.detectors}
    histograms = plot_ood_histograms({d: {"in-distribution": inside[d], **{n: v[d] for n, v in sets.items()}}
                                      for d in trust.detectors}, trust.thresholds, out_dir / "ood_histograms.png")
    summary = {"bundle": str(loaded.path), "in_distribution": str(in_data) if isinstance(in_data, (str, Path))
               else "DataFrame", "split": split, "ood_sets": {k: str(v) for k, v in ood.items()},
               "default_detector": trust.default_detector, "id_recall": trust.id_recall, "results": results}
    rows = "".join(f"<tr><td>{html.escape(d)}</td><td>{html.escape(n)}</td><td>{m['auroc']:.3f}</td>"
                   f"<td>{m['fpr_at_95_tpr']:.3f}</td><td>{m['aupr_out']:.3f}</td>"
                   f"<td>{m.get('ood_detected', float('nan')):.3f}</td><td>{m['ood_images']}</td></tr>"
                   for d, per_set in results.items() for n, m in per_set.items())
    atomic_write_text(out_dir / "report.html", (
        "<!doctype html><meta charset='utf-8'><title>oncolens OOD evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>Out-of-distribution detection: {html.escape(str(loaded.path))}</h1>"
        f"<p>{len(next(iter(inside.values())))} in-distribution images; thresholds keep {trust.id_recall:.0%} of "
        "validation images; OOD is the positive class.</p><table><tr><th>detector</th><th>OOD set</th>"
        "<th>AUROC</th><th>FPR at 95% TPR</th><th>AUPR</th><th>detected at threshold</th><th>images</th></tr>"
        f"{rows}</table><img src='{histograms.name}' style='max-width:100%'>"))
    atomic_write_json(out_dir / "ood_metrics.json", summary)
    return summary
