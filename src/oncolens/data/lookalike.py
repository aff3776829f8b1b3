"""Look-alike images without patient ids: groups of images whose embeddings are closer than a threshold
chosen from the data, and how close a held-out split sits to its training images.

Adjacent CT/MRI slices and neighbouring fields of one slide differ pixel by pixel (their hashes differ) but
look alike to a network; a split that separates them is optimistic. Embeddings are any per-image feature
vectors (e.g. a frozen backbone's pooled features: :mod:`oncolens.training.lookalikes` computes them
through the feature cache); similarity is cosine.

Cost: the k nearest neighbours of every image are found by brute force in chunks (scikit-learn's
``NearestNeighbors``, bounded working memory) on a PCA projection to at most 64 dimensions, and their
similarities are then recomputed exactly; time grows as n^2 x 64 (100,000 images: about a minute on 2
cores), memory as n x k. Groups are the connected components (scipy) of the neighbour pairs closer than
the threshold: transitive within each image's k neighbours. The threshold is chosen from the data
(:func:`choose_threshold`) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = ["Neighbours", "LookalikeGroups", "nearest_neighbours", "choose_threshold", "lookalike_groups",
           "SplitProximity", "split_proximity", "NEIGHBOURS", "PROJECTED_DIM", "MAX_SHARE", "IDENTICAL"]

#: neighbours per image: the profile runs from an image's own look-alikes out to unrelated images
NEIGHBOURS = 30
#: neighbours are searched in a PCA projection of at most this many dimensions
PROJECTED_DIM = 64
#: the largest look-alike group may hold at most this share of the images (a test fold's: 1 of 5)
MAX_SHARE = 0.2
#: images at least this similar are the same image (a copy): always one group, whatever the threshold
IDENTICAL = 0.9999


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Neighbours:
    """Each row's ``k`` nearest other rows (``index``) and their exact cosine similarities, nearest first."""

    index: np.ndarray
    similarity: np.ndarray


def nearest_neighbours(embeddings: np.ndarray, k: int = NEIGHBOURS, reference: np.ndarray | None = None,
                       seed: int = 0) -> Neighbours:
    """The ``k`` nearest neighbours of every row of ``embeddings`` among the other rows (``reference``
    None) or among the rows of ``reference``."""
    from sklearn import config_context
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    queries = _unit(embeddings)
    bank = queries if reference is None else _unit(reference)
    k = min(k, len(bank) - (1 if reference is None else 0))
    if k < 1 or not len(queries):
        raise DataError(f"nearest neighbours need at least 2 images, got {len(bank)}")
    qp, bp = queries, bank
    if bank.shape[1] > PROJECTED_DIM and len(bank) > PROJECTED_DIM:
        pca = PCA(n_components=PROJECTED_DIM, svd_solver="randomized", random_state=seed).fit(bank)
        qp, bp = _unit(pca.transform(queries)), _unit(pca.transform(bank))
    # a few spare candidates: the projection may reorder close ties, the exact similarities settle them
    extra = min(len(bank) - k - (1 if reference is None else 0), max(5, k // 2))
    finder = NearestNeighbors(n_neighbors=k + extra + (1 if reference is None else 0), metric="cosine",
                              algorithm="brute").fit(bp)
    with config_context(working_memory=256):  # MiB per chunk of the distance matrix
        _, candidates = finder.kneighbors(qp)
    if reference is None:  # drop each row itself
        rows = np.arange(len(queries))[:, None]
        candidates = np.array([c[c != r[0]][: k + extra] for c, r in zip(candidates, rows)])
    exact = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(queries), 1024):  # bounded memory: 1,024 rows of candidates at a time
        rows = slice(start, start + 1024)
        exact[rows] = np.einsum("nd,nkd->nk", queries[rows], bank[candidates[rows]])
    order = np.argsort(-exact, axis=1)[:, :k]
    return Neighbours(index=np.take_along_axis(candidates, order, 1),
                      similarity=np.take_along_axis(exact, order, 1))


def _components(neighbours: Neighbours, threshold: float | None, also: np.ndarray | None = None) -> np.ndarray:
    """Connected components of the neighbour pairs at least ``threshold`` similar (identical ones, at least
    :data:`IDENTICAL`, even without a threshold) and of ``also``'s groups."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(neighbours.index)
    rows, cols = [np.zeros(0, int)], [np.zeros(0, int)]
    if len(neighbours.index):
        close = neighbours.similarity >= (IDENTICAL if threshold is None else min(threshold, IDENTICAL))
        rows.append(np.repeat(np.arange(n), close.sum(1)))
        cols.append(neighbours.index[close])
    if also is not None:  # chain each given group's members
        codes = np.unique(np.asarray(also).astype(str), return_inverse=True)[1]
        order = np.argsort(codes, kind="stable")
        same = codes[order][1:] == codes[order][:-1]
        rows.append(order[1:][same])
        cols.append(order[:-1][same])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def choose_threshold(neighbours: Neighbours, max_share: float = MAX_SHARE, step: float = 0.005,
                     plateau: float = 0.1) -> tuple[float | None, str]:
    """The cosine similarity above which two images count as look-alikes, and why (None: none found).

    Lowering the threshold from 1 merges look-alikes (another slice of a scan, a neighbouring field) into
    groups. When the look-alikes are distinct (copies of a few originals), the number of groups then stays
    put over a wide range of thresholds (``plateau`` wide, within 1% of the images): the threshold is that
    plateau's middle. Otherwise chains of look-alikes start joining unrelated images and the largest group
    jumps: the threshold is the one just above its largest jump, among those whose largest group holds at
    most ``max_share`` of the images (a test fold's share), so a grouped split stays possible.
    """
    n = len(neighbours.index)
    steps = int(round(plateau / step))
    seen: list[tuple[float, int, int]] = []  # (threshold, largest group, groups)
    threshold = float(np.ceil(neighbours.similarity.max() / step) * step)
    while threshold > -1:
        labels = _components(neighbours, threshold)
        seen.append((threshold, int(np.bincount(labels).max()), int(labels.max()) + 1))
        if len(seen) > steps and seen[-1][2] <= 0.95 * n and seen[-steps - 1][2] - seen[-1][2] <= 0.01 * n:
            top, bottom = seen[-steps - 1][0], seen[-1][0]
            middle = round((top + bottom) / 2, 6)
            return middle, (f"the number of look-alike groups stays at {seen[-1][2]} from {top:.3f} down to "
                            f"{bottom:.3f}: distinct groups of copies, cut in the middle")
        if seen[-1][1] > max_share * n:
            break
        threshold = round(threshold - step, 6)
    jumps = [(seen[i + 1][1] - seen[i][1], i) for i in range(len(seen) - 1)]
    if not jumps or max(jumps)[0] <= 0:
        return None, f"no threshold groups look-alikes while keeping every group within {max_share:.0%} of the images"
    _, i = max(jumps, key=lambda j: (j[0], -j[1]))  # the largest jump; the highest threshold on ties
    (above, before, _), (below, after, _) = seen[i], seen[i + 1]
    return above, (f"just above the largest jump of the largest group ({before} -> {after} images between "
                   f"{above:.3f} and {below:.3f}), among thresholds that keep every group within {max_share:.0%} of "
                   f"the images: below it, chains of look-alikes join unrelated images")


@dataclass
class LookalikeGroups:
    """A group label per image, the threshold that made them and why, and the groups' sizes."""

    labels: np.ndarray
    threshold: float | None
    reason: str
    nearest_similarity: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(len(np.unique(self.labels)))

    @property
    def largest(self) -> int:
        return int(np.unique(self.labels, return_counts=True)[1].max()) if len(self.labels) else 0

    def summary(self) -> str:
        if self.threshold is None:
            return f"look-alike groups: none ({self.reason})"
        return (f"look-alike groups: {self.n_groups} groups of {len(self.labels)} images (largest {self.largest}) at "
                f"cosine similarity >= {self.threshold:.3f}: {self.reason}")


def lookalike_groups(embeddings: np.ndarray, threshold: float | None = None, k: int = NEIGHBOURS,
                     also: np.ndarray | None = None, seed: int = 0) -> LookalikeGroups:
    """Group images whose embeddings are at least ``threshold`` similar (None: :func:`choose_threshold`),
    transitively within each image's ``k`` nearest neighbours; ``also``: labels of groups that must stay
    whole too (exact / perceptual duplicates), merged in."""
    neighbours = nearest_neighbours(embeddings, k=k, seed=seed)
    reason = "given (--group-threshold)"
    if threshold is None:
        threshold, reason = choose_threshold(neighbours)
    labels = _components(neighbours, threshold, also)
    return LookalikeGroups(labels=np.array([f"look-{g}" for g in labels], dtype=object), threshold=threshold,
                           reason=reason, nearest_similarity=neighbours.similarity[:, 0])


@dataclass
class SplitProximity:
    """How close one held-out split's images are to the training images, against training's own."""

    split: str
    n: int
    nearest_to_train: np.ndarray  # each held-out image's nearest training image (cosine similarity)
    within_train: np.ndarray  # each training image's nearest other training image
    threshold: float

    @property
    def near_copies(self) -> int:
        return int((self.nearest_to_train >= self.threshold).sum())

    def sentence(self) -> str:
        share = self.near_copies / max(self.n, 1)
        median, train_median = float(np.median(self.nearest_to_train)), float(np.median(self.within_train))
        verdict = (f"the {self.split} accuracy is optimistic" if share >= 0.05 else
                   "few enough that the estimate is not inflated by look-alikes")
        return (f"{share:.0%} of {self.split} images ({self.near_copies} of {self.n}) have a training image closer than "
                f"{self.threshold:.3f}: {verdict} (median nearest-training similarity {median:.3f}; within training "
                f"{train_median:.3f})")

    def to_dict(self) -> dict:
        q = [0.05, 0.25, 0.5, 0.75, 0.95]
        return {"split": self.split, "n": self.n, "threshold": self.threshold, "near_copies": self.near_copies,
                "nearest_to_train_quantiles": dict(zip(map(str, q), np.quantile(self.nearest_to_train, q).round(4).tolist())),
                "within_train_quantiles": dict(zip(map(str, q), np.quantile(self.within_train, q).round(4).tolist())),
                "sentence": self.sentence()}


def split_proximity(embeddings: np.ndarray, splits: np.ndarray, threshold: float, train: str = "train",
                    seed: int = 0) -> list[SplitProximity]:
    """For every split but ``train``: its images' nearest training image, against the training images'
    nearest other training image, and how many are closer than ``threshold``."""
    splits = np.asarray(splits).astype(str)
    bank = embeddings[splits == train]
    if len(bank) < 2:
        raise DataError("the leakage check needs at least 2 training images")
    within = nearest_neighbours(bank, k=1, seed=seed).similarity[:, 0]
    out = []
    for name in sorted(set(splits) - {train, ""}):
        held = embeddings[splits == name]
        nearest = nearest_neighbours(held, k=1, reference=bank, seed=seed).similarity[:, 0]
        out.append(SplitProximity(split=name, n=len(held), nearest_to_train=nearest, within_train=within,
                                  threshold=threshold))
    return out
