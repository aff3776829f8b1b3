"""Commands that train: train (single process or torchrun ranks), cv, calibrate, and the studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._base import (app, Commands, config_options, console, fail, Jobs, join_ranks, OldWorkers, perturbation_names,
                    relaunched, renamed, train_config_class, UserErrors, with_options)







@app.command()
@with_options(config_options(train_config_class(), skip=("data",)))
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

    if relaunched(nproc):
        return
    dist = join_ranks(options.get("device"))
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


@app.command()
@with_options(config_options(train_config_class(), skip=("data", "runs_dir", "name", "val_fraction",
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
                                                   f"afterwards ({', '.join(perturbation_names())})")] = None,
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
    cross_validate(manifest, out, folds=folds, train_config=train_config, seed=seed, n_boot=n_boot, jobs=jobs,
                   ensemble=ensemble, perturb=[p.strip() for p in perturb.split(",") if p.strip()] if perturb else (),
                   holdout=holdout)
    console.print((out / "results.md").read_text(), markup=False, highlight=False)


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder (any kind: flat, tree, ensemble)")],
    data: Annotated[Path, typer.Option("--data", help="manifest CSV with a split column")],
    split: Annotated[str, typer.Option(help="calibration split: temperature, prediction sets, OOD thresholds "
                                            "(all: every row)")] = "val",
    fit_split: Annotated[str, typer.Option(help="split the OOD detectors are fitted on; keep: the bundle's own "
                                                "(recalibrating on a new source's labelled images)")] = "train",
    alpha: Annotated[float, typer.Option(help="default error rate of the prediction sets")] = 0.1,
    score: Annotated[str, typer.Option(help="default conformal score: lac, aps, raps, aps-randomized, "
                                                   "raps-randomized (exact coverage; sets may be empty)")] = "aps",
    mondrian: Annotated[bool, typer.Option("--mondrian/--marginal", help="one threshold per class (class-"
                                           "conditional coverage) or one for all")] = False,
    detector: Annotated[str, typer.Option(help="default OOD detector: msp, energy, mahalanobis, knn")] = "knn",
    knn_k: Annotated[int, typer.Option(help="neighbours of the KNN detector")] = 10,
    label_col: Annotated[Optional[str], typer.Option(help="manifest column with the true labels")] = None,
    intended_use: Annotated[Optional[str], typer.Option(help="what the model is for, in its model card (default: "
                                                        "as it was; research only, not for diagnosis)")] = None,
) -> None:
    """Calibrate a bundle: temperature scaling and conformal prediction sets on the --split images, OOD
    detectors fitted on the --fit-split images with thresholds at 95% in-distribution recall; stored in
    the bundle (trust.json + trust.safetensors), used by predict, evaluate, serve and app."""
    from oncolens.training.calibrate import CalibrationConfig, calibrate_bundle

    config = CalibrationConfig(alpha=alpha, score=score, mondrian=mondrian, default_detector=detector, knn_k=knn_k)
    trust = calibrate_bundle(bundle, data, split=split, fit_split=fit_split, label_col=label_col, config=config,
                             intended_use=intended_use)
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
    if report.get("warning"):
        console.print(f"warning: {report['warning']}", style="bold yellow", markup=False, highlight=False)
    console.print(f"calibration stored in {bundle}")




study_app = Commands(help="The seeds' studies as one-command experiments.", no_args_is_help=True, cls=UserErrors)
app.add_typer(study_app, name="study")

# options every study shares (typer reads them from each command's signature); the training options are
# TrainConfig's fields, with the studies' own defaults
StudyOut = Annotated[Path, typer.Option("--out", "-o", help="study folder (rerun to resume)")]
Boot = Annotated[int, typer.Option(help="bootstrap resamples per confidence interval")]
ModelList = Annotated[str, typer.Option(help="comma-separated model names")]
SplitManifest = Annotated[Path, typer.Argument(help="manifest (split once if it has no split column)")]
#: set by each study for each of its runs
_STUDY_SETS = ("data", "runs_dir", "name", "label_col", "resume")


def _study_options(skip: tuple[str, ...] = (), kind: str = "study"):
    """The training options of a study's command, shown with the study's defaults (the planner's)."""
    from oncolens.training.config import study_defaults

    return with_options(config_options(train_config_class(), skip=_STUDY_SETS + skip, defaults=study_defaults(kind)))


def _study_config(options: dict, kind: str = "study"):
    """The training configuration of a study's runs: the study's defaults, then the given options, each
    checked as `train` checks it (a bad value is a clear error before any run starts)."""
    from oncolens.training.config import study_config

    return study_config(kind, **options)


def _run_study(study, out: Path) -> None:
    """Run a study (a function of no arguments); print its results table, or a clear error."""
    study()
    console.print((out / "results.md").read_text(), markup=False, highlight=False)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@study_app.command("transfer")
@_study_options()
def study_transfer(
    manifest: Annotated[Path, typer.Argument(help="manifest with a domain column (e.g. cancer_type, organ)")],
    out: StudyOut = Path("study-transfer"),
    domain_col: Annotated[str, typer.Option(help="column whose values are the source/target datasets")] = "cancer_type",
    label_map: Annotated[str, typer.Option(help="YAML label map or 'normal-vs-tumor'")] = "normal-vs-tumor",
    n_boot: Boot = 200,
    jobs: Jobs = 1,
    workers: OldWorkers = None,
    **options,
) -> None:
    """Cross-cancer transfer matrix (seed 000): one model per source, tested on every target."""
    from oncolens.studies import transfer_matrix

    config = _study_config(options)
    _run_study(lambda: transfer_matrix(manifest, out, domain_col=domain_col, label_map=label_map, train_config=config,
                                       seed=config.seed, n_boot=n_boot,
                                       jobs=renamed(jobs, workers, "--workers", "--jobs")), out)
    console.print(f"study: {out}")


def _comparison_study(name: str, function: str, default_models: str, doc: str, kind: str = "study") -> None:
    """Register ``study NAME``: train and evaluate variants on one split (compare, pretraining)."""

    @_study_options(skip=("model",), kind=kind)
    def command(
        manifest: SplitManifest,
        models: ModelList = default_models,
        out: StudyOut = Path(f"study-{name}"),
        n_boot: Boot = 200,
        jobs: Jobs = 1,
        workers: OldWorkers = None,
        folds: Annotated[Optional[int], typer.Option(help="cross-validate every variant on the same patient-grouped "
                                                          "folds instead of one split")] = None,
        **options,
    ) -> None:
        from oncolens import studies

        config = _study_config(options, kind)
        study = getattr(studies, function)
        _run_study(lambda: study(manifest, out, _names(models), config, seed=config.seed, n_boot=n_boot, folds=folds,
                                 jobs=renamed(jobs, workers, "--workers", "--jobs")), out)

    command.__doc__ = doc
    command.__name__ = f"study_{name}"
    study_app.command(name)(command)


_comparison_study("compare", "compare_models", "seed_cnn,seed_bn_cnn,tf_efficientnet_lite0",
                  "Architecture comparison (seed 002): same split, AUC/F1/accuracy with CIs, time, parameters.")
_comparison_study("pretraining", "compare_pretraining", "alexnet,vgg16",
                  "Random vs ImageNet initialisation per architecture (seed 003); unavailable weights are reported.",
                  kind="pretraining")


@study_app.command("hierarchy")
@_study_options()
def study_hierarchy(
    manifest: Annotated[Path, typer.Argument(help="manifest with one column per level (e.g. tumor_class, subtype)")],
    levels: Annotated[str, typer.Option(help="comma-separated levels, top first: columns or binary, subtype, "
                                             "organ, tumor")] = "binary,subtype",
    out: StudyOut = Path("study-hierarchy"),
    n_boot: Boot = 200,
    jobs: Jobs = 1,
    workers: OldWorkers = None,
    **options,
) -> None:
    """Hierarchical classifiers (seeds 004, 001): top model + one per branch, routed, vs one flat model."""
    from oncolens.studies import hierarchy_study

    config = _study_config(options)
    _run_study(lambda: hierarchy_study(manifest, out, _names(levels), train_config=config, seed=config.seed,
                                       n_boot=n_boot, jobs=renamed(jobs, workers, "--workers", "--jobs")), out)
    console.print(f"hierarchical bundle: {out / 'hierarchical_bundle'}")
