"""How far a batch of new images is from what a bundle was trained and calibrated on (no labels needed).

Four views, each against the bundle's own held-out calibration images (kept in its trust files): how close
each new image's nearest training image is; a two-sample test on the pooled features (maximum mean
discrepancy with an RBF kernel, permutation p-value); how many images the out-of-distribution detector
flags against the share it flags by design; and the predicted class mix. A verdict says whether the
bundle's calibration (prediction sets, thresholds) can be expected to hold on this data, and what to do.
Copies are one piece of evidence, not many: :func:`check_new_data` collapses files with the same bytes and
images with near-identical features, and leaves out copies of training images (no evidence of a shift).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, InputNotFound
from ..models.factory import pool_features

__all__ = ["ShiftReport", "check_new_data", "shift_report", "mmd_test", "nearest_training_similarity", "distinct_rows",
           "copy_distance", "MMD_ROWS", "COPY_SHARE", "MIN_DISTINCT"]

#: rows of each side the two-sample test compares (a seeded subset beyond it) and its permutations
MMD_ROWS, PERMUTATIONS = 400, 500
#: below this p-value a difference counts as real
SIGNIFICANCE = 0.01
#: two images are copies (the same pixels, a re-save) when their features are closer than this share of the
#: distance between a calibration image and its nearest other one (median): a bundle's own scale, as features
#: of distinct images can be 0.999 cosine-similar (a seed CNN's pooled maps)
COPY_SHARE = 0.05
#: distinct images (copies collapsed, copies of training images left out) the check needs to say anything
MIN_DISTINCT = 2
#: the verdict when it cannot
TOO_FEW = "too few distinct images to tell"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mmd_test(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """Squared maximum mean discrepancy (unbiased) between samples ``a`` and ``b`` with an RBF kernel of
    median-heuristic width, and its permutation p-value. (Neither scipy nor scikit-learn has this test; the
    kernel is scikit-learn's.)"""
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    rng = np.random.default_rng(seed)
    a = a[rng.permutation(len(a))[:MMD_ROWS]]
    b = b[rng.permutation(len(b))[:MMD_ROWS]]
    pooled = np.concatenate([a, b]).astype(np.float64)
    squared = euclidean_distances(pooled, squared=True)
    width = np.median(squared[np.triu_indices(len(pooled), 1)])
    kernel = rbf_kernel(pooled, gamma=1.0 / max(width, 1e-12))
    np.fill_diagonal(kernel, 0.0)
    n, m = len(a), len(b)

    def statistic(order: np.ndarray) -> float:
        x, y = order[:n], order[n:]
        return (kernel[np.ix_(x, x)].sum() / (n * (n - 1)) + kernel[np.ix_(y, y)].sum() / (m * (m - 1))
                - 2 * kernel[np.ix_(x, y)].mean())

    observed = statistic(np.arange(n + m))
    exceed = sum(statistic(rng.permutation(n + m)) >= observed for _ in range(permutations))
    return float(observed), float((exceed + 1) / (permutations + 1))


@dataclass
class ShiftReport:
    """What :func:`check_new_data` found, with a verdict and what to do."""

    images: int
    nearest_similarity: dict  # quantiles of each new image's nearest training image
    reference_nearest_similarity: dict  # the same for the bundle's held-out calibration images
    mmd: float
    mmd_p_value: float
    flagged: int
    flagged_fraction: float
    expected_fraction: float
    flagged_p_value: float
    expected_basis: str
    predicted_mix: dict
    reference_mix: dict
    mix_distance: float  # total variation between the two mixes
    verdict: str = ""
    advice: list[str] = field(default_factory=list)
    copies: int = 0  # images collapsed into another one (same bytes, or near-identical features)
    training_copies: int = 0  # distinct images identical to a training image, left out of the evidence

    def lines(self) -> list[str]:
        q = self.nearest_similarity, self.reference_nearest_similarity
        left_out = ([f"{self.copies} copies collapsed"] if self.copies else []) + (
            [f"{self.training_copies} identical to training images left out"] if self.training_copies else [])
        return [
            f"{self.images} new images" + (f" ({'; '.join(left_out)})" if left_out else "")
            + " against the bundle's held-out calibration images:",
            f"nearest training image: median similarity {q[0]['0.5']:.3f} (calibration images: {q[1]['0.5']:.3f}); "
            f"5th percentile {q[0]['0.05']:.3f} ({q[1]['0.05']:.3f})",
            f"two-sample test on features: MMD^2 {self.mmd:.4f}, permutation p = {self.mmd_p_value:.3g}",
            f"flagged out of distribution: {self.flagged} ({self.flagged_fraction:.1%}; expected about "
            f"{self.expected_fraction:.0%} from {self.expected_basis}, p = {self.flagged_p_value:.3g})",
            "predicted class mix: " + ", ".join(f"{k} {v:.0%}" for k, v in self.predicted_mix.items())
            + " (calibration images: " + ", ".join(f"{k} {v:.0%}" for k, v in self.reference_mix.items())
            + f"; total variation {self.mix_distance:.2f})",
            f"verdict: {self.verdict}", *(f"  - {line}" for line in self.advice)]

    def to_dict(self) -> dict:
        return asdict(self)


def _quantiles(values: np.ndarray) -> dict:
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    if not len(values):
        return dict.fromkeys(map(str, q), float("nan"))
    return dict(zip(map(str, q), np.quantile(values, q).round(4).tolist()))


def _nearest(queries: np.ndarray, bank: np.ndarray, leave_one_out: bool = False, dtype=np.float32) -> np.ndarray:
    similarity = np.empty(len(queries), dtype=dtype)
    for start in range(0, len(queries), 1024):  # bounded memory whatever the number of images
        block = _unit(queries[start:start + 1024]) @ bank.T
        if leave_one_out:
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        similarity[start:start + 1024] = block.max(1)
    return similarity


def nearest_training_similarity(trust, features: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity to its nearest training image (the KNN detector's bank of training
    features; without one, to the nearest held-out calibration image)."""
    features = pool_features(features, trust.reference.shape[1])
    bank = getattr(trust.detectors.get("knn"), "bank", None)
    return _nearest(features, bank if bank is not None else _unit(trust.reference))


def shift_report(trust, classes: list[str], features: np.ndarray, probabilities: np.ndarray,
                 ood_values: np.ndarray | None, nearest: np.ndarray | None = None, copies: int = 0,
                 training_copies: int = 0) -> ShiftReport:
    """The report for new images' pooled ``features`` (all, or a sample when their ``nearest`` training
    similarities are given), calibrated ``probabilities`` and default-detector values, against ``trust``'s
    reference (its held-out calibration images); ``copies`` and ``training_copies`` say how many images were
    collapsed or left out before (:func:`check_new_data`). Fewer than :data:`MIN_DISTINCT` images: no verdict."""
    from scipy.stats import betabinom

    if trust is None or trust.reference is None:
        raise DataError("this bundle keeps no reference of its calibration images: run `oncolens calibrate` on it "
                        "(with this version) first")
    reference = trust.reference
    features = pool_features(features, reference.shape[1])
    bank = getattr(trust.detectors.get("knn"), "bank", None)
    new_near = nearest if nearest is not None else nearest_training_similarity(trust, features)
    ref_near = _nearest(reference, bank) if bank is not None else _nearest(reference, _unit(reference), True)
    enough = len(probabilities) >= MIN_DISTINCT
    mmd, p_value = mmd_test(_unit(features), _unit(reference)) if enough else (float("nan"), float("nan"))
    # the threshold is an order statistic of n calibration values, so the share it flags of exchangeable new
    # images is Beta(n - k + 1, k)-distributed (k its rank): the count flagged is beta-binomial
    n_cal = int(trust.report.get("calibration_images") or len(reference))
    rank = min(n_cal, int(np.ceil(trust.id_recall * (n_cal - 1))) + 1)
    a, b = n_cal - rank + 1, rank
    expected = a / (a + b)
    flagged = int((ood_values > trust.thresholds[trust.default_detector]).sum()) if ood_values is not None else 0
    flagged_p = float(betabinom.sf(flagged - 1, len(probabilities), a, b))
    mix = np.bincount(probabilities.argmax(1), minlength=len(classes)) / max(len(probabilities), 1)
    reference_mix = trust.report.get("reference_predicted_mix") or {c: float("nan") for c in classes}
    distance = 0.5 * float(np.nansum(np.abs(mix - np.array([reference_mix.get(c, 0.0) for c in classes]))))
    report = ShiftReport(images=len(probabilities), nearest_similarity=_quantiles(new_near),
                         reference_nearest_similarity=_quantiles(ref_near), mmd=mmd, mmd_p_value=p_value,
                         flagged=flagged, flagged_fraction=flagged / max(len(probabilities), 1),
                         expected_fraction=expected,
                         flagged_p_value=flagged_p, expected_basis=f"the threshold's rank among {n_cal} calibration images",
                         predicted_mix=dict(zip(classes, mix.round(4).tolist())),
                         reference_mix=reference_mix, mix_distance=distance, copies=copies,
                         training_copies=training_copies)
    if enough:
        _judge(report)
    else:
        report.verdict = f"{TOO_FEW}: {len(probabilities)} distinct image(s) left to compare"
        report.advice = [f"copies of one image, or of training images, are not independent evidence; check at least "
                         f"{MIN_DISTINCT} distinct new images (a few dozen for a reliable test)"]
    return report


def _judge(report: ShiftReport) -> None:
    """Shifted when the detector flags more images than its threshold allows, or when the features differ
    (two-sample test) and the images are also farther from their nearest training images than most held-out
    calibration images are (median below the calibration images' 25th percentile). The two-sample test
    alone is not enough: images of other patients of the same source differ from the calibration patients
    (look-alikes cluster by patient), which is no shift."""
    farther = report.nearest_similarity["0.5"] < report.reference_nearest_similarity["0.25"]
    differ = report.mmd_p_value < SIGNIFICANCE and farther
    flagged = report.flagged_p_value < SIGNIFICANCE
    if not (differ or flagged):
        report.verdict = "like the calibration images: no evidence of a shift"
        report.advice = ["the bundle's prediction sets and out-of-distribution thresholds can be expected to hold"]
        if report.mmd_p_value < SIGNIFICANCE:
            report.advice.append(f"their features differ from the calibration images' (p = {report.mmd_p_value:.2g}) "
                                 "but they are as close to the training images: other patients or cases of the same "
                                 "source, as far as the check can tell")
        return
    reasons = ([f"their features differ (p = {report.mmd_p_value:.2g}) and they are farther from the training "
                f"images (median similarity {report.nearest_similarity['0.5']:.3f} against "
                f"{report.reference_nearest_similarity['0.5']:.3f})"] if differ else []) + \
        ([f"{report.flagged_fraction:.0%} are flagged out of distribution against about "
          f"{report.expected_fraction:.0%}"] if flagged else [])
    report.verdict = "shifted: " + " and ".join(reasons)
    report.advice = [
        "accuracy, prediction-set coverage and the out-of-distribution thresholds measured on the training "
        "source may not hold on these images",
        "label ~50 images from this source and recalibrate on them: `oncolens calibrate BUNDLE --data "
        "labelled.csv --split all --fit-split keep` (prediction sets then cover at their rate on this source)",
        "then measure accuracy on other labelled images of this source with `oncolens evaluate` before relying "
        "on the predictions"]
    if report.mix_distance > 0.2:
        report.advice.append(f"the predicted class mix differs by {report.mix_distance:.0%}: a different case mix, "
                             "or a model that sees this source differently")


def _distance(similarity: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(2.0 - 2.0 * similarity, 0.0))  # of unit vectors, from their cosine similarity


def copy_distance(trust) -> float:
    """The distance (between unit feature vectors) below which two images count as copies of one image:
    :data:`COPY_SHARE` of the median distance from a held-out calibration image to its nearest other one."""
    reference = _unit(np.asarray(trust.reference, dtype=np.float64))
    return max(COPY_SHARE * float(np.median(_distance(_nearest(reference, reference, True, np.float64)))), 1e-4)


def distinct_rows(features: np.ndarray, tolerance: float) -> np.ndarray:
    """Positions of the rows of ``features`` that are no copy of an earlier row (their unit vectors farther
    than ``tolerance`` from every earlier row's): one row of each set of copies."""
    units = _unit(np.asarray(features, dtype=np.float64))
    copy = np.zeros(len(units), dtype=bool)
    for start in range(0, len(units), 1024):  # bounded memory: a block of rows against the rows before it
        block = units[start:start + 1024] @ units[:start + 1024].T
        block[np.triu_indices(len(block), k=start, m=block.shape[1])] = -np.inf  # itself and later rows
        copy[start:start + 1024] = (_distance(block) <= tolerance).any(1)
    return np.flatnonzero(~copy)


def check_new_data(bundle: str | Path, inputs, batch_size: int = 8, num_workers: int | None = None,
                   backend: str = "auto") -> ShiftReport:
    """:func:`shift_report` for new images (a folder, a manifest CSV or a list of paths), scored by the
    bundle with features; unreadable images are left out (the report counts the rest). Copies count once:
    files with the same bytes and images with near-identical features (:func:`copy_distance`) are collapsed,
    and images identical to a training image are left out of the evidence (the report says how many)."""
    from ..data import load_manifest
    from ..data.layouts import expand_image_paths
    from ..data.split import file_hashes
    from ..models import load_any_bundle

    named = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    missing = [str(p) for p in named if not Path(p).exists()]
    if isinstance(inputs, (str, Path)) and missing:
        raise InputNotFound(f"{inputs} does not exist: give a folder of images, image files or a manifest CSV")
    if named and len(missing) == len(named):
        raise InputNotFound(f"none of the {len(named)} images exists (e.g. {missing[0]})")
    loaded = load_any_bundle(bundle)
    if loaded.trust is None or loaded.trust.reference is None:
        raise DataError(f"{bundle} keeps no reference of its calibration images: run `oncolens calibrate` on it "
                        "(with this version) first")
    if isinstance(inputs, (str, Path)) and str(inputs).endswith(".csv"):
        paths = load_manifest(inputs)["path"].tolist()
    else:
        paths = [str(p) for p in expand_image_paths([Path(p) for p in named])]
    if len(paths) < 2:
        raise DataError(f"the check needs at least 2 images, got {len(paths)}")
    hashes = file_hashes(paths)  # the same bytes are one image ("" for a file that cannot be read: kept)
    first = {h: p for p, h in zip(paths, hashes) if h}
    unique = [p for p, h in zip(paths, hashes) if not h or first[h] == p]
    scores = loaded.score(unique, features=True, batch_size=batch_size, num_workers=num_workers, backend=backend)
    if not len(scores):
        raise DataError("none of the images could be read")
    if len(scores) < 2 and len(unique) >= 2:
        raise DataError("fewer than 2 of the images could be read")
    node = loaded.trust.ood_node or next(iter(scores.node_logits))
    features = pool_features(scores.features[node], loaded.trust.reference.shape[1])
    nearest = nearest_training_similarity(loaded.trust, features)
    tolerance = copy_distance(loaded.trust)
    distinct = distinct_rows(features, tolerance)
    bank = getattr(loaded.trust.detectors.get("knn"), "bank", None)  # the training images' features, if kept
    trained = (np.zeros(len(distinct), dtype=bool) if bank is None else _distance(_nearest(
        np.asarray(features[distinct], dtype=np.float64), _unit(np.asarray(bank, dtype=np.float64)),
        dtype=np.float64)) <= tolerance)
    seen = distinct[~trained]  # a copy of a training image is no evidence of a shift
    ood = loaded.trust.default_ood_values(scores)
    return shift_report(loaded.trust, list(loaded.classes), features[seen], scores.probabilities[seen],
                        None if ood is None else np.asarray(ood)[seen], nearest=nearest[seen],
                        copies=len(paths) - len(unique) + len(scores) - len(distinct),
                        training_copies=len(distinct) - len(seen))
