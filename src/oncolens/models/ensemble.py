"""Ensemble bundles: k classifiers with the same classes and preprocessing, their probabilities averaged
(the fold models of a cross-validation, as nnU-Net ensembles its five folds).

An ensemble is one classifier to everything else: its model is an :class:`EnsembleClassifier` whose
"backbone" runs every member's backbone (features concatenated) and whose "head" averages the
members' softmax outputs, returning log-probabilities. The scoring loop, ONNX export, explanations
(Grad-CAM over every member's target layer, averaged by pytorch-grad-cam) and the apps use it
unchanged. On disk: ``bundle.json`` (``"kind": "ensemble"``) and ``members/<name>/`` flat bundles.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import BundleError
from ..files import atomic_folder, atomic_write_json
from .bundle import Bundle, bundle_header, load_bundle, read_bundle_info, register_bundle_kind
from .factory import OncoClassifier

__all__ = ["EnsembleBundle", "EnsembleClassifier", "save_ensemble_bundle", "load_ensemble_bundle"]


class _Backbones(nn.Module):
    def __init__(self, backbones: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(backbones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone(x) for backbone in self.members], dim=1)

    @property
    def num_features(self) -> int:
        """The width of the members' features side by side (what the OOD detectors read, pooled)."""
        from .factory import feature_dim

        return sum(feature_dim(backbone) for backbone in self.members)


class _MeanProbabilities(nn.Module):
    def __init__(self, heads: Sequence[nn.Module], widths: Sequence[int], temperatures: Sequence[float]):
        super().__init__()
        self.members = nn.ModuleList(heads)
        self.widths = list(widths)
        self.head_name = "ensemble"
        self.register_buffer("temperatures", torch.tensor(list(temperatures), dtype=torch.float32), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, self.widths, dim=1)
        probabilities = torch.stack([torch.softmax(head(part) / self.temperatures[i], dim=1)
                                     for i, (head, part) in enumerate(zip(self.members, parts))])
        return torch.log(probabilities.mean(0).clamp_min(1e-12))  # softmax of this = the mean probabilities


class EnsembleClassifier(OncoClassifier):
    """The members' mean probability as one classifier (logits are log mean probabilities); each member's
    probabilities are its calibrated ones when ``temperatures`` (one per member) are given."""

    def __init__(self, members: Sequence[OncoClassifier], temperatures: Sequence[float] | None = None):
        widths = []
        for member in members:
            with torch.no_grad():
                pre = member.preprocessing
                probe = torch.zeros(1, pre.channels, pre.size, pre.size, device=next(member.parameters()).device)
                widths.append(int(member.backbone(probe).shape[1]))
        first = members[0]
        config = {**first.config, "ensemble_of": len(members)}
        temperatures = list(temperatures) if temperatures is not None else [1.0] * len(members)
        super().__init__(_Backbones([m.backbone for m in members]),
                         _MeanProbabilities([m.head for m in members], widths, temperatures), first.preprocessing, config)
        object.__setattr__(self, "_parts", list(members))  # views on the same modules, not extra submodules

    def cam_parts(self) -> list[OncoClassifier]:
        """The members, each a classifier of its own (sharing these weights): a CAM is computed at every
        member's target layer and pytorch-grad-cam averages the maps."""
        return list(self._parts)


class EnsembleBundle(Bundle):
    """A loaded ensemble: one classifier averaging its member bundles."""

    kind = "ensemble"

    def __init__(self, members: Sequence[Bundle], meta: dict | None = None, path: Path | None = None):
        self.members = list(members)
        # each member as it predicts on its own: with its calibration temperature, if it has one
        temperatures = [next(iter(m.trust.temperatures.values()), 1.0) if m.trust is not None else 1.0
                        for m in self.members]
        model = EnsembleClassifier([m.model for m in self.members], temperatures).eval()
        super().__init__(model=model, classes=self.members[0].classes, preprocessing=self.members[0].preprocessing,
                         meta=meta, path=path)


def _check_members(members: Sequence[Bundle], where: str) -> None:
    if len(members) < 2:
        raise BundleError(f"{where}: an ensemble needs at least two members, got {len(members)}")
    first = members[0]
    for member in members[1:]:
        if member.classes != first.classes:
            raise BundleError(f"{where}: member {member.path} has classes {member.classes}, not {first.classes}")
        if member.preprocessing != first.preprocessing or member.model.name != first.model.name:
            raise BundleError(f"{where}: member {member.path} preprocesses differently or is another model; "
                              "an ensemble averages models of one kind on one input")


def save_ensemble_bundle(members: Sequence[str | Path], path: str | Path, meta: dict | None = None) -> Path:
    """Write an ensemble bundle at ``path`` from flat member bundles (copied in; built aside, moved in place)."""
    path = Path(path)
    loaded = [load_bundle(m) for m in members]
    _check_members(loaded, str(path))
    meta = dict(meta or {})
    if "tta" not in meta:  # one test-time augmentation for all members: theirs, or the richest if they differ
        from .scoring import TTA_VIEWS

        meta["tta"] = max((m.meta.get("tta") or "none" for m in loaded), key=lambda name: len(TTA_VIEWS.get(name, ())))
    with atomic_folder(path) as staging:
        names = []
        for i, member in enumerate(members, start=1):
            name = f"members/{i:02d}_{Path(member).parent.name or Path(member).name}"
            shutil.copytree(member, staging / name)
            names.append(name)
        atomic_write_json(staging / "bundle.json", {
            **bundle_header("ensemble", meta), "classes": loaded[0].classes, "members": names, "meta": meta})
    return path


def load_ensemble_bundle(path: str | Path, device: str = "cpu", info: dict | None = None) -> EnsembleBundle:
    """Load an ensemble bundle written by :func:`save_ensemble_bundle`."""
    path = Path(path)
    info = info or read_bundle_info(path)
    names = info.get("members")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(f"{path / 'bundle.json'}: 'members' must be a list of member folders")
    members = []
    for name in names:
        folder = (path / name).resolve()
        if not folder.is_relative_to(path.resolve()):  # never follow a path out of the bundle folder
            raise BundleError(f"{path}: member path {name!r} leaves the bundle folder")
        members.append(load_bundle(folder, device=device))
    _check_members(members, str(path))
    if info.get("classes") != members[0].classes:
        raise BundleError(f"{path / 'bundle.json'}: classes {info.get('classes')} do not match the members' "
                          f"{members[0].classes}")
    meta = {**info.get("meta", {}), "oncolens_version": info.get("oncolens_version")}
    bundle = EnsembleBundle(members, meta=meta, path=path)
    bundle.model.to(device)
    return bundle


register_bundle_kind("ensemble", lambda path, device, info: load_ensemble_bundle(path, device, info))
