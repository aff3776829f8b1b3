"""Cross-cancer transferability (seed 000, Table 1): train one model per source domain, test it on
every domain's test split through a shared label map; the source x target matrix, diagonal included."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..data import load_manifest, save_manifest
from ..errors import DataError, renamed_keyword
from ..evaluation import evaluate, load_evaluation, load_label_map
from ..figures import save_figure, subplots
from ..files import atomic_write, atomic_write_text, safe_name
from ..training import TrainConfig, train
from ..training.config import study_config
from ..training.tasks import grouped_split
from .runner import Job, run_jobs

__all__ = ["transfer_matrix"]


def _train_job(config: dict) -> str:
    """Train one run of a study; a run killed before it finished (a checkpoint, no done marker) is resumed
    from its checkpoint, so rerunning the study continues where it stopped."""
    from rich.console import Console

    from ..training import resume

    cfg = TrainConfig(**config)
    if (cfg.run_dir / "checkpoint.pt").exists():
        return str(resume(cfg.run_dir, console=Console(quiet=True)).bundle_path)
    return str(train(cfg, console=Console(quiet=True)).bundle_path)


def _eval_job(bundle: str, data: str, out_dir: str, n_boot: int) -> None:
    evaluate(bundle, data, split="test", out_dir=out_dir, n_boot=n_boot)


def _plot(matrix: pd.DataFrame, title: str, out: Path) -> Path:
    fig, ax = subplots(figsize=(1.3 * len(matrix.columns) + 3, 1.1 * len(matrix) + 2))
    image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix.index)), matrix.index)
    ax.set_xlabel("target (test data)")
    ax.set_ylabel("source (training data)")
    for i in range(len(matrix.index)):
        for j in range(len(matrix.columns)):
            value = matrix.iat[i, j]
            ax.text(j, i, "n/a" if pd.isna(value) else f"{value:.2f}", ha="center", va="center",
                    color="white" if not pd.isna(value) and value < 0.6 else "black")
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    save_figure(fig, out)
    return out


def transfer_matrix(manifest: str | Path, out_dir: str | Path, domain_col: str = "cancer_type",
                    label_map: str | dict = "normal-vs-tumor", train_config: TrainConfig | None = None,
                    test: float = 0.25, val: float = 0.15, seed: int = 42, n_boot: int = 200,
                    jobs: int = 1, *, workers: int | None = None) -> pd.DataFrame:
    """Train per ``domain_col`` value on the mapped labels; return the long table of source x target results.
    ``jobs`` runs train or evaluate at a time (``workers`` is its deprecated name)."""
    jobs = renamed_keyword("transfer_matrix", "workers", "jobs", workers, jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_manifest(manifest)
    if domain_col not in frame.columns:
        raise DataError(f"column {domain_col!r} not in the manifest ({list(frame.columns)})")
    mapping = load_label_map(label_map)
    frame = frame.assign(original_label=frame["label"], label=[mapping.target_of(v) or "" for v in frame["label"]])
    unmapped = sorted(set(frame.loc[frame["label"] == "", "original_label"]))
    if unmapped:
        raise DataError(f"labels {unmapped} are not in the label map {mapping.targets}")
    domains = sorted(frame[domain_col].astype(str).unique())
    if len(domains) < 2:
        raise DataError(f"need at least two values of {domain_col!r} for a transfer matrix, found {domains}")
    base = asdict(train_config or study_config())
    splits = {}
    folder = {d: safe_name(d) for d in domains}  # domain values come from the data: safe folder and run names
    for domain in domains:
        path = out_dir / "data" / f"{folder[domain]}.csv"
        if not path.exists():  # fixed once: a resumed study reuses the same splits
            part = frame[frame[domain_col].astype(str) == domain].drop(columns=["split"], errors="ignore")
            save_manifest(grouped_split(part, TrainConfig(**base), test=test, val=val, seed=seed)[0], path)
        splits[domain] = path
    runs = out_dir / "runs"
    train_jobs = [Job(f"train {d}", _train_job, {"config": {**base, "data": str(splits[d]), "runs_dir": str(runs),
                                                           "name": folder[d], "seed": seed}},
                      done=runs / folder[d] / ".done") for d in domains]
    run_jobs(train_jobs, jobs)
    evals = {(s, t): out_dir / "evals" / f"{folder[s]}__{folder[t]}" for s in domains for t in domains}
    eval_jobs = [Job(f"evaluate {s} -> {t}", _eval_job, {"bundle": str(runs / folder[s] / "bundle"),
                                                        "data": str(splits[t]), "out_dir": str(evals[s, t]),
                                                        "n_boot": n_boot},
                     done=evals[s, t] / ".done") for s in domains for t in domains]
    run_jobs(eval_jobs, jobs)
    rows = []
    for s in domains:
        for t in domains:
            report = load_evaluation(evals[s, t]).report
            rows.append({"source": s, "target": t, "accuracy": report.value("accuracy"),
                         "accuracy_ci95": report.interval("accuracy"), "roc_auc": report.value("roc_auc_macro"),
                         "roc_auc_ci95": report.interval("roc_auc_macro")})
    table = pd.DataFrame(rows)
    atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    lines = [f"# Transfer matrix ({domain_col}; labels mapped to {', '.join(mapping.classes)})", ""]
    for metric in ("accuracy", "roc_auc"):
        matrix = table.pivot(index="source", columns="target", values=metric)
        atomic_write(out_dir / f"{metric}_matrix.csv", lambda tmp, matrix=matrix: matrix.to_csv(tmp))
        _plot(matrix, f"{metric} (source model on target test split)", out_dir / f"{metric}_matrix.png")
        lines += [f"## {metric}", "", "| source \\ target | " + " | ".join(matrix.columns) + " |",
                  "|---|" + "---|" * len(matrix.columns)]
        for source, row in matrix.iterrows():
            lines.append(f"| {source} | " + " | ".join("n/a" if pd.isna(v) else f"{v:.3f}" for v in row) + " |")
        lines.append("")
    atomic_write_text(out_dir / "results.md", "\n".join(lines))
    return table
