"""When not to trust a prediction: calibrated probabilities, conformal prediction sets and
out-of-distribution (OOD) detectors, stored with a bundle and applied to its scores.

* **Temperature scaling** (Guo et al. 2017): one temperature per classifier node, fitted on validation logits.
* **Conformal prediction sets** (split conformal): a score function says how unusual a label is for an image;
  the calibration images' scores of their true labels give a threshold, the ``ceil((n+1)(1-alpha))``-th
  smallest, and the set is every label scoring at or below it. Marginal: one threshold; Mondrian
  (class-conditional): one threshold per class from that class's images. Score functions are registered:
  LAC (1 - p), APS (probability mass of the labels ranked at or above the label) and RAPS (APS plus a
  penalty ``lam`` per rank beyond ``k_reg``). APS and RAPS here are the deterministic variants (no random
  tie-breaking), so the same image always gets the same set. The calibration scores themselves are stored,
  so any alpha can be asked for later.
* **OOD detectors**, registered, each fitted from training features/logits and given the threshold that
  keeps 95% of validation (in-distribution) images: MSP, energy (from logits), Mahalanobis (class means and
  a shared covariance of the penultimate features) and KNN (cosine distance to the k-th nearest training
  image). Higher score = more unusual. Feature detectors read the penultimate features pooled to at most
  2,048 dimensions (:func:`oncolens.models.factory.detector_dim`), Mahalanobis keeps its covariance as
  low-rank factors and KNN a bounded bank, so the files are sized by the data, never by d squared.

Everything is kept as ``trust.safetensors`` (arrays) + ``trust.json`` (settings) in the bundle folder: no
pickle. The formulas are checked in tests against crepes (conformal) and pytorch-ood (detectors).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import BundleError, DataError
from ..files import atomic_write, atomic_write_json
from ..registry import Registry

__all__ = ["CONFORMAL_SCORES", "OOD_DETECTORS", "ConformalCalibration", "OODDetector", "Trust", "Assessment",
           "conformal_quantile", "fit_temperature", "expected_calibration_error", "register_conformal_score",
           "register_detector", "load_trust", "save_trust", "TRUST_FILES", "softmax"]

TRUST_FILES = ("trust.json", "trust.safetensors")
logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins (L1 norm).

    The same binning as torchmetrics' ``multiclass_calibration_error`` (the test suite checks the numbers
    against it); written here because importing torchmetrics costs more than the whole calibration step.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) == 0:
        return float("nan")
    confidence = proba.max(1)
    correct = (proba.argmax(1) == np.asarray(y)).astype(np.float64)
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1), confidence, side="right") - 1
    count = np.bincount(bins, minlength=n_bins + 1)
    gap = np.bincount(bins, weights=correct, minlength=n_bins + 1) - np.bincount(bins, weights=confidence,
                                                                                  minlength=n_bins + 1)
    return float(np.abs(gap).sum() / count.sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of ``softmax(logits / T)`` (L-BFGS on log T)."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(max(log_t.exp().item(), 0.05), 20.0))


# --- conformal prediction ------------------------------------------------------------------------
#: name -> function(probabilities (n, k), params) -> nonconformity of every label (n, k)
CONFORMAL_SCORES: Registry[Callable[[np.ndarray, dict], np.ndarray]] = Registry("conformal score")


def register_conformal_score(name: str, fn: Callable[[np.ndarray, dict], np.ndarray], override: bool = False) -> None:
    """Make a conformal score function available by name (``fn(probabilities, params) -> (n, k) scores``)."""
    CONFORMAL_SCORES.register(name, fn, override)


def _lac(proba: np.ndarray, params: dict) -> np.ndarray:
    return 1.0 - proba


def _ranked_mass(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every label: the probability mass of the labels ranked at or above it, and its 1-based rank."""
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_cumsum = np.cumsum(np.take_along_axis(proba, order, axis=1), axis=1)
    mass = np.empty_like(proba)
    rank = np.empty(proba.shape, dtype=np.int64)
    np.put_along_axis(mass, order, sorted_cumsum, axis=1)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(1, proba.shape[1] + 1), proba.shape).copy(), axis=1)
    return mass, rank


def _aps(proba: np.ndarray, params: dict) -> np.ndarray:
    return _ranked_mass(proba)[0]


def _raps(proba: np.ndarray, params: dict) -> np.ndarray:
    mass, rank = _ranked_mass(proba)
    return mass + float(params.get("lam", 0.1)) * np.maximum(rank - int(params.get("k_reg", 1)), 0)


def _uniform_per_image(proba: np.ndarray) -> np.ndarray:
    """One U(0, 1) draw per row, seeded by the exact bytes of the row's probabilities: the same image scored
    the same way always gets the same set (a different computation of the same image, e.g. another batch
    size, may differ in the last float bits and draw anew)."""
    rows = np.ascontiguousarray(proba, dtype=np.float64)
    return np.array([np.random.default_rng(int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                                          "little")).random() for row in rows])


def _randomized(score: Callable[[np.ndarray, dict], np.ndarray]) -> Callable[[np.ndarray, dict], np.ndarray]:
    """The randomised form of a ranked-mass score (Romano et al. 2020; Angelopoulos et al. 2021): a label's own
    probability counts with weight U, so coverage is exactly 1 - alpha instead of above it (sets may be empty)."""
    def randomized(proba: np.ndarray, params: dict) -> np.ndarray:
        return score(proba, params) - (1.0 - _uniform_per_image(proba))[:, None] * proba
    return randomized


for _name, _fn in (("lac", _lac), ("aps", _aps), ("raps", _raps), ("aps-randomized", _randomized(_aps)),
                   ("raps-randomized", _randomized(_raps))):
    register_conformal_score(_name, _fn)


def conformal_quantile(scores: np.ndarray, alpha: float, what: str = "calibration images") -> float:
    """The ``ceil((n+1)(1-alpha))``-th smallest of ``scores``: a set of labels scoring at most this covers
    a new exchangeable image's true label with probability >= 1 - alpha. Too few scores for ``alpha`` is
    an error (the threshold would be infinite), never a silent all-label set."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        need = math.ceil(1 / alpha - 1)
        raise DataError(f"{n} {what} are too few for alpha={alpha:g}: a finite threshold needs at least {need} "
                        f"(n >= 1/alpha - 1); use a larger alpha or calibrate on more images")
    return float(np.sort(scores)[rank - 1])


@dataclass
class ConformalCalibration:
    """Calibration scores of the true labels, per score function, and each calibration image's label."""

    labels: np.ndarray  # (n,) true class index of each calibration image
    scores: dict[str, np.ndarray]  # score name -> (n,) nonconformity of the true label
    params: dict = field(default_factory=dict)  # e.g. {"raps": {"k_reg": 1, "lam": 0.1}}
    n_classes: int = 0

    @classmethod
    def fit(cls, proba: np.ndarray, labels: np.ndarray, names: tuple[str, ...] = ("lac", "aps", "raps"),
            alpha: float = 0.1, lam: float = 0.1) -> "ConformalCalibration":
        """Calibrate on held-out probabilities; RAPS's ``k_reg`` is the smallest k whose top-k accuracy reaches
        1 - alpha on these images (the RAPS paper's rule)."""
        labels = np.asarray(labels, dtype=np.int64)
        params: dict = {}
        if any(name.startswith("raps") for name in names):
            _, rank = _ranked_mass(proba)
            true_rank = rank[np.arange(len(labels)), labels]
            k_reg = next((k for k in range(1, proba.shape[1] + 1) if (true_rank <= k).mean() >= 1 - alpha),
                         proba.shape[1])
            params.update({name: {"k_reg": int(k_reg), "lam": float(lam)} for name in names if name.startswith("raps")})
        scores = {name: CONFORMAL_SCORES[name](proba, params.get(name, {}))[np.arange(len(labels)), labels]
                  for name in names}
        return cls(labels=labels, scores=scores, params=params, n_classes=proba.shape[1])

    def thresholds(self, name: str, alpha: float, mondrian: bool = False) -> np.ndarray:
        """One threshold per class (all equal unless ``mondrian``)."""
        if name not in self.scores:
            raise DataError(f"no conformal calibration for score {name!r}; calibrated: {', '.join(self.scores)}")
        if not 0 < alpha < 1:
            raise DataError(f"alpha must be between 0 and 1, got {alpha}")
        scores = self.scores[name]
        if not mondrian:
            return np.full(self.n_classes, conformal_quantile(scores, alpha))
        return np.array([conformal_quantile(scores[self.labels == c], alpha, f"calibration images of class {c}")
                         for c in range(self.n_classes)])

    def sets(self, proba: np.ndarray, name: str = "aps", alpha: float = 0.1, mondrian: bool = False) -> np.ndarray:
        """Boolean (n, k): label j is in image i's prediction set."""
        return CONFORMAL_SCORES[name](proba, self.params.get(name, {})) <= self.thresholds(name, alpha, mondrian)[None]


# --- out-of-distribution detectors ------------------------------------------------------------
class OODDetector:
    """Base class: ``fit`` on training features/logits/labels, ``score`` (higher = more unusual)."""

    name = "base"
    uses = "logits"  # or "features"
    description = ""

    def fit(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> "OODDetector":
        return self

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def check_fitted(self, *attributes: str) -> None:
        """A clear error, not an AttributeError, when ``score`` is called before ``fit`` or ``load``."""
        if not all(hasattr(self, a) for a in attributes):
            raise DataError(f"the {self.name} detector is not fitted: fit it on training features or load a "
                            "calibrated bundle (oncolens calibrate)")

    def settings(self) -> dict:
        return {}

    def load(self, state: dict[str, np.ndarray], settings: dict) -> "OODDetector":
        return self


#: name -> detector class
OOD_DETECTORS: Registry[type[OODDetector]] = Registry("OOD detector")


def register_detector(cls: type[OODDetector], override: bool = False) -> type[OODDetector]:
    """Make an :class:`OODDetector` subclass available by its ``name`` (usable as a class decorator)."""
    return OOD_DETECTORS.register(cls.name, cls, override)


@register_detector
class MaxSoftmax(OODDetector):
    name, uses, description = "msp", "logits", "1 - the largest softmax probability (Hendrycks & Gimpel 2017)"

    def score(self, features, logits):
        return 1.0 - softmax(logits).max(1)


@register_detector
class Energy(OODDetector):
    name, uses, description = "energy", "logits", "free energy -logsumexp(logits) (Liu et al. 2020)"

    def score(self, features, logits):
        z = logits.max(1, keepdims=True)
        return -(z[:, 0] + np.log(np.exp(logits - z).sum(1)))


def _ledoit_wolf_shrinkage(centred: np.ndarray) -> tuple[float, float]:
    """scikit-learn's Ledoit-Wolf shrinkage ``s`` of ``centred`` rows and the ridge ``s * mu`` it adds
    (``mu = trace(X'X/n) / d``): the estimate is ``(1 - s) X'X/n + s mu I``."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, d = centred.shape
    shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    return shrinkage, shrinkage * float((centred * centred).sum()) / n / d


def _principal_axes(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, ``>= 0``) and unit eigenvectors (columns) of ``X'X / n`` with a nonzero
    eigenvalue: from the d x d covariance when there are more rows than dimensions, else from the n x n Gram
    matrix (so the cost is bounded by ``min(n, d)`` squared)."""
    n, d = centred.shape
    if n >= d:
        values, vectors = np.linalg.eigh(centred.T @ centred / n)
    else:
        values, left = np.linalg.eigh(centred @ centred.T / n)
        keep = values > 0
        values, left = values[keep], left[:, keep]
        vectors = centred.T @ left / np.sqrt(n * values)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    keep = values > values[:1].max(initial=0.0) * 1e-10
    return values[keep], vectors[:, order][:, keep]


@register_detector
class Mahalanobis(OODDetector):
    """Squared Mahalanobis distance to the nearest class mean under one shared covariance.

    The covariance is stored as low-rank factors, never as a dense d x d matrix: its leading principal axes
    (at most ``max_rank`` and ``max_axes_bytes`` of float32) with their variances, and one variance for every
    other direction (probabilistic PCA, Tipping & Bishop 1999: the mean of the remaining variance, plus the
    shrinkage ridge). When the training features span no more directions than that (e.g. fewer training
    images than 1,024 at 2,048 dimensions, any number at 1,280) the distance is exact.
    """

    name, uses = "mahalanobis", "features"
    description = ("squared Mahalanobis distance to the nearest class mean, shared covariance (Lee et al. 2018), "
                   "Ledoit-Wolf shrinkage, stored as low-rank factors")

    def __init__(self, shrinkage: bool = True, max_rank: int | None = None, max_axes_bytes: int = 8 << 20):
        self.shrinkage, self.max_rank, self.max_axes_bytes = shrinkage, max_rank, max_axes_bytes

    def fit(self, features, logits, labels):
        x = np.asarray(features, dtype=np.float64)
        n, d = x.shape
        classes = np.unique(labels)
        means = np.stack([x[labels == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        if self.shrinkage:  # Ledoit-Wolf: well conditioned even with fewer images than feature dimensions
            shrinkage, ridge = _ledoit_wolf_shrinkage(centred)
        else:  # the maximum-likelihood estimate with a tiny ridge (as pytorch-ood does)
            shrinkage, ridge = 0.0, 1e-6 / n
        ridge = max(ridge, 1e-12)
        values, vectors = _principal_axes(centred)
        rank = min(self.max_rank or d, max(1, self.max_axes_bytes // (4 * d)), len(values))
        kept = (1 - shrinkage) * values[:rank] + ridge
        rest = d - rank  # directions off the kept axes share one variance (none left when rank == d)
        residual = ridge + (1 - shrinkage) * float(values[rank:].sum()) / rest if rest else np.inf
        self.means = means.astype(np.float32)
        self.axes = np.ascontiguousarray(vectors[:, :rank], dtype=np.float32)  # (d, r)
        self.weights = (1.0 / kept).astype(np.float32)  # precision along each kept axis
        self.residual_precision = np.array([1.0 / residual], dtype=np.float32)
        return self

    def score(self, features, logits):
        self.check_fitted("means", "axes", "weights", "residual_precision")
        x = np.asarray(features, dtype=np.float64)
        means, axes = self.means.astype(np.float64), self.axes.astype(np.float64)
        weights, rest = self.weights.astype(np.float64), float(self.residual_precision[0])
        projected_means = means @ axes  # (classes, r)
        out = np.empty(len(x))
        for start in range(0, len(x), 1024):  # bounded memory: rows x classes x rank at a time
            rows = x[start:start + 1024]
            # ||x - m||^2 by BLAS; its part along the kept axes weighted by their precisions, the rest by one
            squared = (np.einsum("nd,nd->n", rows, rows)[:, None] - 2 * rows @ means.T
                       + np.einsum("cd,cd->c", means, means)[None])
            along = (rows @ axes)[:, None, :] - projected_means[None]
            along = along * along
            off_axes = np.maximum(squared - along.sum(2), 0.0)
            distances = rest * off_axes + np.einsum("ncr,r->nc", along, weights)
            out[start:start + 1024] = np.maximum(distances.min(1), 0.0)
        return out

    def state(self):
        return {"means": self.means, "axes": self.axes, "weights": self.weights,
                "residual_precision": self.residual_precision}

    def settings(self):
        return {"rank": int(self.axes.shape[1])}

    def load(self, state, settings):
        self.means, self.axes = state["means"].astype(np.float32), state["axes"].astype(np.float32)
        self.weights = state["weights"].astype(np.float32)
        self.residual_precision = state["residual_precision"].astype(np.float32)
        return self

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


@register_detector
class KNN(OODDetector):
    """Cosine distance to the k-th nearest training image; the bank of training features is a random subset
    of at most ``max_bank`` rows and ``max_bank_bytes`` (float32), so its size is bounded whatever the data."""

    name, uses = "knn", "features"
    description = "cosine distance to the k-th nearest training image (Sun et al. 2022)"

    def __init__(self, k: int = 10, max_bank: int = 20_000, max_bank_bytes: int = 10 << 20, seed: int = 0):
        self.k, self.max_bank, self.max_bank_bytes, self.seed = k, max_bank, max_bank_bytes, seed

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def fit(self, features, logits, labels):
        bank = self._normalise(features)
        rows = max(self.k, min(self.max_bank, self.max_bank_bytes // (4 * bank.shape[1])))
        self.fit_images = len(bank)
        if len(bank) > rows:  # a random subset keeps memory, disk and time bounded
            bank = bank[np.sort(np.random.default_rng(self.seed).choice(len(bank), rows, replace=False))]
        self.bank = bank
        self.k = int(min(self.k, len(bank)))
        return self

    def score(self, features, logits):
        self.check_fitted("bank")
        similarity = self._normalise(features) @ self.bank.T
        kth = -np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
        return 1.0 - kth

    def state(self):
        return {"bank": self.bank}

    def settings(self):
        return {"k": self.k, "fit_images": int(getattr(self, "fit_images", len(self.bank)))}

    def load(self, state, settings):
        self.bank, self.k = state["bank"].astype(np.float32), int(settings["k"])
        self.fit_images = int(settings.get("fit_images", len(self.bank)))
        return self

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])


# --- everything together ----------------------------------------------------------------------
@dataclass
class Assessment:
    """What the trust layer says about one image."""

    prediction_set: list[str] | None  # None: the bundle has no conformal calibration
    alpha: float | None
    ood: bool | None  # None: no detector
    ood_detector: str | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_recall: float | None = None

    def to_dict(self) -> dict:
        return {"prediction_set": self.prediction_set, "alpha": self.alpha, "out_of_distribution": self.ood,
                "ood_detector": self.ood_detector, "ood_score": self.ood_score, "ood_threshold": self.ood_threshold,
                "ood_id_recall": self.ood_recall}

    @property
    def warning(self) -> str | None:
        """The sentence a person sees when the input is unlike the training images, else None."""
        if not self.ood:
            return None
        return (f"unlike the training images: {self.ood_detector} {self.ood_score:.4g} > {self.ood_threshold:.4g} "
                f"(threshold keeps {self.ood_recall:.0%} of in-distribution validation images)")


@dataclass
class Trust:
    """A bundle's calibration: temperatures, conformal calibration and fitted OOD detectors."""

    temperatures: dict[str, float] = field(default_factory=dict)  # node key -> T
    conformal: ConformalCalibration | None = None
    detectors: dict[str, OODDetector] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # detector -> score above which = OOD
    ood_node: str | None = None  # the node whose features/logits the detectors read
    default_alpha: float = 0.1
    default_score: str = "aps"
    mondrian: bool = False
    default_detector: str = "knn"
    id_recall: float = 0.95
    report: dict = field(default_factory=dict)  # what calibration measured (ECE before/after, counts)
    #: pooled features of (at most REFERENCE_ROWS) calibration images: what new data is compared with
    reference: np.ndarray | None = None

    @property
    def needs_features(self) -> bool:
        return any(d.uses == "features" for d in self.detectors.values())

    def default_needs_features(self) -> bool:
        """Whether the default detector reads penultimate features (score with ``features=True``)."""
        return self.default_detector in self.detectors and self.detectors[self.default_detector].uses == "features"

    def detector_values(self, scores, detector: str | None = None, strict: bool = False) -> np.ndarray | None:
        """Detector ``detector``'s score (default: the default detector's) of every row of ``scores``
        (:class:`~oncolens.models.scoring.Scores`): the one way a detector is run. None without that detector,
        rows, or the features it needs; ``strict`` makes missing features an error instead."""
        name = detector or self.default_detector
        chosen = self.detectors.get(name)
        if chosen is None or not len(scores):
            return None
        node = self.ood_node or next(iter(scores.node_logits))
        features = scores.features.get(node)
        if chosen.uses == "features" and features is None:
            if strict:
                raise DataError(f"the {name} detector needs features: score with features=True")
            return None
        return chosen.score(features, scores.node_logits[node])

    def default_ood_values(self, scores) -> np.ndarray | None:
        """The default detector's score of every row of ``scores``, or None (see :meth:`detector_values`)."""
        return self.detector_values(scores)

    def check(self, detector: str | None = None) -> str:
        """The detector to use (``detector``, else the default), or a clear error when it was not fitted."""
        detector = detector or self.default_detector
        if detector not in self.detectors and self.detectors:
            raise DataError(f"no OOD detector {detector!r} in this bundle; fitted: {', '.join(self.detectors)}")
        return detector

    def assess(self, scores, alpha: float | None = None, detector: str | None = None,
               score_name: str | None = None) -> list[Assessment]:
        """One :class:`Assessment` per row of ``scores`` (:class:`~oncolens.models.scoring.Scores`; pass
        ``features=True`` when scoring so that feature detectors can run)."""
        alpha = self.default_alpha if alpha is None else alpha
        sets = None
        if self.conformal is not None and len(scores):
            chosen = self.conformal.sets(scores.probabilities, score_name or self.default_score, alpha, self.mondrian)
            sets = [[c for c, keep in zip(scores.classes, row) if keep] for row in chosen]
        detector = self.check(detector)
        value = self.detector_values(scores, detector, strict=True)
        out = []
        for i in range(len(scores)):
            a = Assessment(prediction_set=sets[i] if sets is not None else None,
                           alpha=alpha if sets is not None else None, ood=None)
            if value is not None:
                threshold = self.thresholds[detector]
                a.ood, a.ood_detector, a.ood_score = bool(value[i] > threshold), detector, float(value[i])
                a.ood_threshold, a.ood_recall = float(threshold), self.id_recall
            out.append(a)
        return out

    def describe(self) -> dict:
        return {"temperatures": self.temperatures, "conformal_scores": list(self.conformal.scores) if self.conformal
                else [], "calibration_images": int(len(self.conformal.labels)) if self.conformal else 0,
                "default_alpha": self.default_alpha, "default_score": self.default_score, "mondrian": self.mondrian,
                "detectors": {n: {"threshold": self.thresholds.get(n), "what": d.description}
                              for n, d in self.detectors.items()},
                "default_detector": self.default_detector, "id_recall": self.id_recall, "report": self.report}


def save_trust(trust: Trust, folder: str | Path) -> None:
    """Write ``trust.safetensors`` and ``trust.json`` into a bundle folder (atomically, arrays first)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {}
    settings: dict = {"format": 2, "temperatures": trust.temperatures, "thresholds": trust.thresholds,
                      "ood_node": trust.ood_node, "default_alpha": trust.default_alpha,
                      "default_score": trust.default_score, "mondrian": trust.mondrian,
                      "default_detector": trust.default_detector, "id_recall": trust.id_recall,
                      "report": trust.report, "detectors": {}}
    if trust.conformal is not None:
        arrays["conformal.labels"] = trust.conformal.labels.astype(np.int64)
        for name, values in trust.conformal.scores.items():
            arrays[f"conformal.score.{name}"] = values.astype(np.float64)
        settings["conformal"] = {"params": trust.conformal.params, "n_classes": trust.conformal.n_classes,
                                 "scores": list(trust.conformal.scores)}
    for name, detector in trust.detectors.items():
        for key, value in detector.state().items():
            arrays[f"ood.{name}.{key}"] = np.ascontiguousarray(value)
        settings["detectors"][name] = detector.settings()
    if trust.reference is not None:
        arrays["reference.features"] = np.ascontiguousarray(trust.reference, dtype=np.float32)
    atomic_write(folder / "trust.safetensors", lambda tmp: save_file(arrays, str(tmp)))
    atomic_write_json(folder / "trust.json", settings)


def _outdated(state: dict[str, np.ndarray]) -> bool:
    """Whether a detector's saved state is from before features were pooled and covariances kept low-rank
    (trust format 1: a dense precision matrix, or a bank wider than the detectors read now)."""
    from .factory import MAX_DETECTOR_DIM

    return "precision" in state or any(v.ndim == 2 and v.shape[1] > MAX_DETECTOR_DIM for v in state.values())


def load_trust(folder: str | Path) -> Trust | None:
    """The calibration saved in a bundle folder, or None for a bundle calibrated before (or never)."""
    folder = Path(folder)
    if not (folder / "trust.json").exists():
        return None
    import json

    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        settings = json.loads((folder / "trust.json").read_text())
        arrays = load_file(str(folder / "trust.safetensors"))
        conformal = None
        if "conformal" in settings:
            c = settings["conformal"]
            conformal = ConformalCalibration(labels=arrays["conformal.labels"],
                                             scores={n: arrays[f"conformal.score.{n}"] for n in c["scores"]},
                                             params=c.get("params", {}), n_classes=int(c["n_classes"]))
        detectors, dropped = {}, []
        for name, detector_settings in settings.get("detectors", {}).items():
            if name not in OOD_DETECTORS:
                raise BundleError(f"unknown OOD detector {name!r}")
            prefix = f"ood.{name}."
            state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if _outdated(state):
                dropped.append(name)
                continue
            detectors[name] = OOD_DETECTORS[name]().load(state, detector_settings)
        default_detector = settings.get("default_detector", "knn")
        if dropped:
            logger.warning("%s: OOD detector(s) %s were fitted on unpooled features by an older oncolens and are "
                           "not used; run `oncolens calibrate` on this bundle again", folder, ", ".join(dropped))
            if default_detector in dropped:
                default_detector = next(iter(detectors), default_detector)
        return Trust(temperatures={k: float(v) for k, v in settings.get("temperatures", {}).items()},
                     conformal=conformal, detectors=detectors,
                     thresholds={k: float(v) for k, v in settings.get("thresholds", {}).items()},
                     ood_node=settings.get("ood_node"), default_alpha=float(settings.get("default_alpha", 0.1)),
                     default_score=settings.get("default_score", "aps"), mondrian=bool(settings.get("mondrian")),
                     default_detector=default_detector, id_recall=float(settings.get("id_recall", 0.95)),
                     report=settings.get("report", {}), reference=arrays.get("reference.features"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise BundleError(f"{folder}: damaged calibration files (trust.json / trust.safetensors): {exc}") from None
