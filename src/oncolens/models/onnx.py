"""ONNX export of any bundle, for fast CPU inference with ONNX Runtime.

A bundle becomes one graph per group of nodes sharing a backbone (see
``ModelBundle.shared_backbones``; a flat bundle is one group of one node): input ``image``, outputs
``features`` (the backbone's penultimate features) and ``logits_<node>`` per node of the group.
Each graph has a JSON sidecar naming its nodes, classes, preprocessing and a fingerprint of the
weights, so a folder of graphs is only reused for the bundle it was exported from.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_write_bytes, atomic_write_json
from .bundle import HierarchyNode, ModelBundle, as_bundle, weights_fingerprint
from .fuse import fix_same_padding

__all__ = ["export_onnx", "onnx_parity", "onnx_graphs", "group_name"]


class _SharedBackboneHeads(nn.Module):
    """One backbone pass, then each head: the features and the logits of every node of a group."""

    def __init__(self, backbone: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return (features, *(head(features) for head in self.heads))


def group_name(group: Sequence[HierarchyNode]) -> str:
    """File stem of a backbone group's graph: its first node's key."""
    return group[0].key


def _group_fingerprint(group: Sequence[HierarchyNode]) -> str:
    return weights_fingerprint(group[0].model.backbone, *(n.model.head for n in group))[:32]


def _sidecar(bundle: ModelBundle, group: Sequence[HierarchyNode]) -> dict:
    return {"nodes": [n.key for n in group], "classes": {n.key: n.bundle.classes for n in group},
            "preprocessing": group[0].bundle.preprocessing.to_dict(), "model": group[0].model.config,
            "fingerprint": _group_fingerprint(group), "bundle": str(bundle.path)}


def _graph_bytes(group: Sequence[HierarchyNode], opset: int) -> bytes:
    model = group[0].model
    pre = model.preprocessing
    # a copy, so the bundle's modules keep their device and train/eval state
    module = copy.deepcopy(_SharedBackboneHeads(model.backbone, [n.model.head for n in group])).eval().cpu()
    example = torch.zeros(2, pre.channels, pre.size, pre.size)
    fix_same_padding(module.backbone, example)  # constant pads: ONNX Runtime folds them (see .fuse)
    outputs = ["features", *(f"logits_{n.key}" for n in group)]
    buffer = io.BytesIO()
    # the TorchScript-based exporter: stable for these CNNs and needs no extra dependency at export time;
    # its notes (deprecation, constant folding skipped) concern the exporter, not the user's bundle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, input_names=["image"],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def export_onnx(bundle: str | Path | ModelBundle, out_dir: str | Path, opset: int = 17) -> dict[str, Path]:
    """One ONNX graph per backbone group in ``out_dir`` (``<group>.onnx`` + ``.json``); ``{group: path}``."""
    loaded = as_bundle(bundle)
    out_dir = Path(out_dir)
    paths = {}
    for group in loaded.shared_backbones():
        out = out_dir / f"{group_name(group)}.onnx"
        atomic_write_bytes(out, _graph_bytes(group, opset))
        atomic_write_json(out.with_suffix(".json"), _sidecar(loaded, group))
        paths[group_name(group)] = out
    return paths


def onnx_graphs(bundle: ModelBundle, folder: str | Path | None = None, opset: int = 17) -> list[bytes | str]:
    """The graph of each backbone group, in group order: a file of ``folder`` when it was exported from
    these weights, else exported (into ``folder`` when given, in memory otherwise)."""
    graphs: list[bytes | str] = []
    folder = Path(folder) if folder else None
    for group in bundle.shared_backbones():
        if folder is None:
            graphs.append(_graph_bytes(group, opset))
            continue
        path = folder / f"{group_name(group)}.onnx"
        sidecar = path.with_suffix(".json")
        try:
            fits = path.is_file() and json.loads(sidecar.read_text()).get("fingerprint") == _group_fingerprint(group)
        except (OSError, ValueError):
            fits = False
        if not fits:
            atomic_write_bytes(path, _graph_bytes(group, opset))
            atomic_write_json(sidecar, _sidecar(bundle, group))
        graphs.append(str(path))
    return graphs


def onnx_parity(bundle: str | Path | ModelBundle, out_dir: str | Path | None = None,
                batch: torch.Tensor | None = None) -> float:
    """The largest class-probability difference of any node between PyTorch and ONNX Runtime on a batch
    (graphs from ``out_dir`` as :func:`export_onnx` wrote them, or exported in memory)."""
    import onnxruntime as ort

    loaded = as_bundle(bundle)
    worst = 0.0
    for group, graph in zip(loaded.shared_backbones(), onnx_graphs(loaded, out_dir)):
        pre = group[0].bundle.preprocessing
        x = batch if batch is not None else torch.randn(8, pre.channels, pre.size, pre.size,
                                                        generator=torch.Generator().manual_seed(0))
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"image": x.numpy().astype(np.float32)})[1:]
        with torch.no_grad():
            for logits, node in zip(outputs, group):
                expected = torch.softmax(node.model(x).float(), 1).numpy()
                worst = max(worst, float(np.abs(torch.softmax(torch.as_tensor(logits), 1).numpy() - expected).max()))
    return worst
