"""Calibrate a bundle after training: temperature scaling and conformal calibration on the validation
images, OOD detectors fitted on the training images with thresholds from the validation images.

Used at the end of every training run and by ``oncolens calibrate`` for an existing bundle (of any kind:
flat, tree, ensemble). The arrays are stored in the bundle folder (:func:`oncolens.models.trust.save_trust`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..models import ModelBundle, as_bundle
from ..models.factory import detector_dim, pool_features
from ..models.scoring import Scores
from ..models.trust import (CONFORMAL_SCORES, OOD_DETECTORS, ConformalCalibration, Trust,
                            expected_calibration_error, fit_temperature, save_trust, softmax)

__all__ = ["CalibrationConfig", "calibrate", "calibrate_bundle"]


@dataclass
class CalibrationConfig:
    """How a bundle is calibrated (defaults: alpha 0.1, APS sets, all four detectors, KNN shown)."""

    alpha: float = 0.1
    score: str = "aps"
    scores: tuple[str, ...] = ("lac", "aps", "raps", "aps-randomized", "raps-randomized")
    mondrian: bool = False
    raps_lambda: float = 0.1
    detectors: tuple[str, ...] = ("msp", "energy", "mahalanobis", "knn")
    default_detector: str = "knn"
    knn_k: int = 10
    id_recall: float = 0.95
    temperature: bool = True
    options: dict = field(default_factory=dict)  # scoring options (batch_size, num_workers, backend)

    def check(self) -> None:
        unknown = [s for s in (*self.scores, self.score) if s not in CONFORMAL_SCORES]
        unknown += [d for d in (*self.detectors, self.default_detector) if d not in OOD_DETECTORS]
        if unknown:
            raise DataError(f"unknown conformal score or detector(s) {sorted(set(unknown))}; scores: "
                            f"{', '.join(CONFORMAL_SCORES)}; detectors: {', '.join(OOD_DETECTORS)}")
        if self.score not in self.scores:
            raise DataError(f"the default conformal score {self.score!r} must be one of the calibrated {self.scores}")
        if self.default_detector not in self.detectors:
            raise DataError(f"the default detector {self.default_detector!r} must be one of {self.detectors}")
        if not 0 < self.alpha < 1 or not 0 < self.id_recall < 1:
            raise DataError("alpha and the in-distribution recall must be between 0 and 1")


def _labelled(bundle: ModelBundle, frame: pd.DataFrame, label_col: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    labels = bundle.labels_of(frame, label_col)
    keep = labels.isin(bundle.classes)
    return frame[keep.to_numpy()], np.array([bundle.classes.index(v) for v in labels[keep]], dtype=np.int64)


def _true_child(node, leaf: str) -> int | None:
    """The index of the class ``node`` must choose on the way to ``leaf``, or None when ``leaf`` is not below it."""
    for index, child in enumerate(node.children.values()):
        if child == leaf or (not isinstance(child, str) and _true_child(child, leaf) is not None):
            return index
    return None


#: the largest temperature :func:`~oncolens.models.trust.fit_temperature` returns: reaching it means the
#: calibration images say the model knows nothing, and the calibration is refused rather than stored
TEMPERATURE_BOUND = 20.0


def _fit_temperatures(loaded, cal: Scores, y_cal: np.ndarray, report: dict,
                      refuse_at_bound: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Temperature scaling of each classifier on the calibration images (a tree: each node on the images whose
    true leaf lies below it), and the calibrated leaf probabilities; ECE before and after go into ``report``."""
    node = next(iter(cal.node_logits))
    temperatures: dict[str, float] = {}
    if loaded.single_classifier:
        temperatures[node] = fit_temperature(cal.node_logits[node], y_cal)
        if temperatures[node] >= TEMPERATURE_BOUND:  # near-uniform probabilities: not a calibration to trust
            said = (f"temperature scaling on {len(y_cal)} calibration images reached its bound "
                    f"(T = {temperatures[node]:g}: near-uniform probabilities, nearly full prediction sets)")
            if refuse_at_bound:
                raise DataError(f"{said}; these images cannot calibrate the model. Calibrate on more, or more varied, "
                                "labelled images (`oncolens calibrate BUNDLE MANIFEST`), or give the run a larger "
                                "--val-fraction")
            report["warning"] = (f"{said}: on these images the model's scores say almost nothing; its prediction "
                                 "sets will be nearly full")
        proba = softmax(cal.node_logits[node] / temperatures[node])
        report.update(temperature=temperatures[node], ece_before=expected_calibration_error(y_cal, cal.probabilities),
                      ece_after=expected_calibration_error(y_cal, proba))
        return temperatures, proba
    leaves = [loaded.classes[i] for i in y_cal]
    for tree_node in loaded.nodes():
        truth = [_true_child(tree_node, leaf) for leaf in leaves]
        rows = np.array([t is not None for t in truth])
        if rows.sum() >= 2 and len({t for t in truth if t is not None}) >= 2:
            temperatures[tree_node.key] = fit_temperature(cal.node_logits[tree_node.key][rows],
                                                          np.array([t for t in truth if t is not None]))
    proba, _ = loaded.combine({k: softmax(v / temperatures.get(k, 1.0)) for k, v in cal.node_logits.items()})
    report.update(temperature=temperatures, ece_before=expected_calibration_error(y_cal, cal.probabilities),
                  ece_after=expected_calibration_error(y_cal, proba))
    return temperatures, proba


#: calibration images whose pooled features the bundle keeps as the reference for new data (``oncolens check``)
REFERENCE_ROWS = 512


def _detectors(kept: Trust | None, fit_features, width: int, config: CalibrationConfig, classes: list[str],
               report: dict) -> dict:
    """The OOD detectors: ``kept``'s (their thresholds move to new calibration images), else fitted on the
    training images' ``fit_features`` pooled to ``width``; what they were fitted on goes into ``report``."""
    if kept is not None:
        report.update(ood_fit_images=kept.report.get("ood_fit_images"), class_prior=kept.report.get("class_prior"))
        return {name: kept.detectors[name] for name in config.detectors if name in kept.detectors}
    features, logits, labels = fit_features
    features = pool_features(features, width)  # cached training features are the backbone's full output
    counts = np.bincount(labels, minlength=len(classes))
    report.update(ood_fit_images=int(len(labels)),
                  class_prior=dict(zip(classes, (counts / max(counts.sum(), 1)).round(4).tolist())))
    return {name: (OOD_DETECTORS[name](k=config.knn_k) if name == "knn" else OOD_DETECTORS[name]()).fit(
        features, logits, labels) for name in config.detectors}


def calibrate(bundle: str | Path | ModelBundle, fit_frame: pd.DataFrame | None, calibration_frame: pd.DataFrame,
              label_col: str | None = None, config: CalibrationConfig | None = None,
              fit_features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              calibration_features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              strict: bool = True, refuse_at_bound: bool = True) -> Trust:
    """A :class:`Trust` for ``bundle``: temperature, conformal calibration and detector thresholds from
    ``calibration_frame`` (validation images), detectors fitted on ``fit_frame`` (training images; None:
    keep the bundle's fitted detectors and move only their thresholds, e.g. recalibrating on labelled images
    of a new source). The trust also keeps the calibration images' pooled features (at most
    :data:`REFERENCE_ROWS`) and their predicted class mix: what ``oncolens check`` compares new data with.

    ``fit_features`` = (features, logits, labels) of the training images when the caller has them already
    (a frozen backbone's feature cache): then the training images are not scored again; likewise
    ``calibration_features`` for the validation images of a single-classifier bundle scored without
    test-time augmentation. ``strict=False``
    keeps going without prediction sets when there are too few calibration images for ``alpha`` (the
    report says so); otherwise that is an error. A temperature that reaches :data:`TEMPERATURE_BOUND` is refused
    (a DataError) unless ``refuse_at_bound`` is False: then it is kept with a warning in the report (a user's
    explicit recalibration, e.g. on a new source where the model has little to say).
    """
    config = config or CalibrationConfig()
    config.check()
    started = time.perf_counter()
    loaded = copy.copy(as_bundle(bundle))
    kept = loaded.trust if fit_frame is None else None  # recalibration on new images keeps the detectors
    loaded.trust = None  # score raw: temperatures are fitted here
    options = {"features": True, **config.options}
    if calibration_features is not None and loaded.single_classifier:
        features, logits, y_cal = calibration_features
        key, raw = next(loaded.nodes()).key, softmax(logits)
        cal = Scores(classes=list(loaded.classes), probabilities=raw, decided=raw.argmax(1),
                     node_probabilities={key: raw}, node_logits={key: logits}, positions=np.arange(len(raw)),
                     sources=[], features={key: features})
        unreadable = 0
    else:
        cal_frame, y_cal = _labelled(loaded, calibration_frame, label_col)
        if len(cal_frame) == 0:
            raise DataError("no calibration images with one of the bundle's classes")
        cal = loaded.score(cal_frame, **options)
        y_cal, unreadable = y_cal[cal.positions], len(cal.unreadable)
    node = next(iter(cal.node_logits))
    report: dict = {"calibration_images": int(len(cal)), "unreadable": unreadable}
    temperatures, proba = (_fit_temperatures(loaded, cal, y_cal, report, refuse_at_bound) if config.temperature
                           else ({}, cal.probabilities))
    conformal = ConformalCalibration.fit(proba, y_cal, names=tuple(config.scores), alpha=config.alpha,
                                         lam=config.raps_lambda)
    try:
        conformal.thresholds(config.score, config.alpha, config.mondrian)  # too few images: said now, not later
    except DataError as exc:
        if strict:
            raise
        conformal, report["conformal"] = None, f"no prediction sets: {exc}"
    if fit_frame is None and (kept is None or not kept.detectors):
        raise DataError("keeping the detectors (no fit images) needs a bundle calibrated before")
    if fit_frame is not None and fit_features is None:
        fit_rows, y_fit = _labelled(loaded, fit_frame, label_col)
        # one view per training image, as a frozen backbone's feature cache holds them (the thresholds come from
        # the calibration images scored exactly as predictions are, test-time augmentation included)
        fitted = loaded.score(fit_rows, **{**options, "tta": "none"})
        fit_features = (fitted.features[node], fitted.node_logits[node], y_fit[fitted.positions])
    decider = next(n for n in loaded.nodes() if n.key == node).model
    # what the detectors read: an image model's pooled features; a bag model's bag embedding as it is
    width = detector_dim(decider.backbone) if hasattr(decider, "backbone") else cal.features[node].shape[1]
    cal_features = pool_features(cal.features[node], width)
    detectors = _detectors(kept, fit_features, width, config, list(loaded.classes), report)
    thresholds = {name: float(np.quantile(detector.score(cal_features, cal.node_logits[node]), config.id_recall,
                                          method="higher")) for name, detector in detectors.items()}
    mix = np.bincount(proba.argmax(1), minlength=len(loaded.classes)) / max(len(proba), 1)
    reference_rows = np.random.default_rng(0).permutation(len(cal_features))[:REFERENCE_ROWS]
    report.update(reference_predicted_mix=dict(zip(loaded.classes, mix.round(4).tolist())),
                  seconds=round(time.perf_counter() - started, 3), alpha=config.alpha, mondrian=config.mondrian)
    return Trust(temperatures=temperatures, conformal=conformal, detectors=detectors, thresholds=thresholds,
                 ood_node=node, default_alpha=config.alpha, default_score=config.score, mondrian=config.mondrian,
                 default_detector=config.default_detector if config.default_detector in detectors
                 else next(iter(detectors), config.default_detector), id_recall=config.id_recall, report=report,
                 reference=cal_features[np.sort(reference_rows)].astype(np.float32))


def calibrate_bundle(bundle_path: str | Path, data: str | Path | pd.DataFrame, split: str = "val",
                     fit_split: str = "train", label_col: str | None = None,
                     config: CalibrationConfig | None = None, intended_use: str | None = None) -> Trust:
    """Calibrate the bundle folder ``bundle_path`` on ``data``'s ``split`` rows (``all``: every row) with
    detectors fitted on its ``fit_split`` rows (``keep``: the bundle's own detectors, thresholds moved to the
    calibration rows: recalibration on labelled images of a new source), and store the result in the folder
    (its model card too, with ``intended_use`` when given)."""
    from ..data import load_manifest

    frame = data if isinstance(data, pd.DataFrame) else load_manifest(data)

    def rows(name: str) -> pd.DataFrame:
        if name == "all":
            return frame
        if "split" not in frame.columns:
            raise DataError("the manifest has no split column: calibrate needs validation rows (--split) and "
                            "training rows (--fit-split); make them with `oncolens split --val 0.1`, or recalibrate "
                            "on every row with --split all --fit-split keep")
        part = frame[frame["split"] == name]
        if part.empty:
            raise DataError(f"no rows in split {name!r} (splits present: {sorted(frame['split'].unique())})")
        return part

    trust = calibrate(bundle_path, None if fit_split == "keep" else rows(fit_split), rows(split),
                      label_col=label_col, config=config, refuse_at_bound=False)  # asked for: kept, with its warning
    save_trust(trust, bundle_path)
    from ..models.card import update_model_card

    update_model_card(bundle_path, intended_use=intended_use)  # its calibration section, from the new files
    return trust
