"""ONNX export of a bundle, for fast CPU inference with ONNX Runtime.

A flat bundle becomes one graph (input ``image``, output ``logits``). A hierarchical bundle becomes one
graph per group of nodes sharing a backbone (see ``HierarchicalBundle.shared_backbones``): the
backbone once, then every node's head, with one output ``logits_<node>`` each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models.bundle import Bundle, load_bundle
from .models.hierarchy import HierarchicalBundle, HierarchyNode, load_any_bundle

__all__ = ["export_onnx", "onnx_parity", "export_hierarchical_onnx", "hierarchical_onnx_parity", "group_name"]


class _SharedBackboneHeads(nn.Module):
    """One backbone pass, then each head: the logits of every node of a group."""

    def __init__(self, backbone: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return tuple(head(features) for head in self.heads)


def _export(module: nn.Module, channels: int, size: int, out: Path, outputs: list[str], opset: int) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, channels, size, size)
    tmp = out.with_name(out.name + ".tmp")
    # the TorchScript-based exporter: stable for these CNNs and needs no extra dependency at export time
    torch.onnx.export(module.eval().cpu(), (example,), str(tmp), input_names=["image"], output_names=outputs,
                      dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                      opset_version=opset, dynamo=False)
    tmp.replace(out)
    return out


def export_onnx(bundle: str | Path | Bundle, out: str | Path, opset: int = 17) -> Path:
    """Write the bundle's model as ONNX (dynamic batch, input ``image``, output ``logits``) plus a JSON sidecar."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pre = loaded.preprocessing
    out = _export(loaded.model, pre.channels, pre.size, Path(out), ["logits"], opset)
    sidecar = {"classes": loaded.classes, "preprocessing": pre.to_dict(), "model": loaded.model.config,
               "bundle": str(loaded.path)}
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return out


def group_name(group: Sequence[HierarchyNode]) -> str:
    """File stem of a backbone group's graph: its first node's key."""
    return group[0].key


def export_hierarchical_onnx(bundle: str | Path | HierarchicalBundle, out_dir: str | Path,
                             opset: int = 17) -> dict[str, Path]:
    """One ONNX graph per backbone group in ``out_dir`` (``<group>.onnx`` + ``.json``); ``{group: path}``."""
    loaded = bundle if isinstance(bundle, HierarchicalBundle) else load_any_bundle(bundle)
    if not isinstance(loaded, HierarchicalBundle):
        raise ValueError(f"{bundle} is a flat bundle: use export_onnx")
    paths = {}
    for group in loaded.shared_backbones():
        model = group[0].bundle.model
        pre = model.preprocessing
        out = _export(_SharedBackboneHeads(model.backbone, [n.bundle.model.head for n in group]), pre.channels,
                      pre.size, Path(out_dir) / f"{group_name(group)}.onnx", [f"logits_{n.key}" for n in group], opset)
        out.with_suffix(".json").write_text(json.dumps(
            {"nodes": [n.key for n in group], "classes": {n.key: n.bundle.classes for n in group},
             "preprocessing": pre.to_dict(), "bundle": str(loaded.path)}, indent=2))
        paths[group_name(group)] = out
    return paths


def _random_batch(channels: int, size: int) -> torch.Tensor:
    return torch.randn(8, channels, size, size, generator=torch.Generator().manual_seed(0))


def _max_difference(session, batch: torch.Tensor, models: Sequence[nn.Module]) -> float:
    outputs = session.run(None, {"image": batch.numpy().astype(np.float32)})
    with torch.no_grad():
        return max(float(np.abs(torch.softmax(torch.as_tensor(logits), 1).numpy()
                                - torch.softmax(model(batch), 1).numpy()).max()) for logits, model in zip(outputs, models))


def onnx_parity(bundle: str | Path | Bundle, onnx_path: str | Path, batch: torch.Tensor | None = None) -> float:
    """Largest absolute difference of class probabilities between PyTorch and ONNX Runtime on a batch."""
    import onnxruntime as ort

    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pre = loaded.preprocessing
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return _max_difference(session, batch if batch is not None else _random_batch(pre.channels, pre.size),
                           [loaded.model])


def hierarchical_onnx_parity(bundle: HierarchicalBundle, paths: dict[str, Path]) -> float:
    """The largest probability difference of any node between PyTorch and its group's ONNX graph."""
    import onnxruntime as ort

    worst = 0.0
    for group in bundle.shared_backbones():
        pre = group[0].bundle.preprocessing
        session = ort.InferenceSession(str(paths[group_name(group)]), providers=["CPUExecutionProvider"])
        worst = max(worst, _max_difference(session, _random_batch(pre.channels, pre.size),
                                           [n.bundle.model for n in group]))
    return worst
