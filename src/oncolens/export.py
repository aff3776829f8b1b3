"""ONNX export of a bundle, for fast CPU inference with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .models.bundle import Bundle, load_bundle

__all__ = ["export_onnx", "onnx_parity"]


def export_onnx(bundle: str | Path | Bundle, out: str | Path, opset: int = 17) -> Path:
    """Write the bundle's model as ONNX (dynamic batch, input ``image``, output ``logits``) plus a JSON sidecar."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = loaded.preprocessing
    example = torch.zeros(2, pre.channels, pre.size, pre.size)
    model = loaded.model.eval().cpu()
    tmp = out.with_name(out.name + ".tmp")
    # the TorchScript-based exporter: stable for these CNNs and needs no extra dependency at export time
    torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False)
    tmp.replace(out)
    sidecar = {"classes": loaded.classes, "preprocessing": pre.to_dict(), "model": loaded.model.config,
               "bundle": str(loaded.path)}
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return out


def onnx_parity(bundle: str | Path | Bundle, onnx_path: str | Path, batch: torch.Tensor | None = None) -> float:
    """Largest absolute difference of class probabilities between PyTorch and ONNX Runtime on a batch."""
    import onnxruntime as ort

    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    pre = loaded.preprocessing
    if batch is None:
        batch = torch.randn(8, pre.channels, pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": batch.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        reference = torch.softmax(loaded.model(batch), 1).numpy()
    return float(np.abs(torch.softmax(torch.as_tensor(logits), 1).numpy() - reference).max())
