"""Pixel attributions from captum: saliency, Integrated Gradients, occlusion, LIME and KernelSHAP.

LIME and KernelSHAP perturb SLIC superpixels (scikit-image) rather than single pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from .registry import Method, register_method


def _unnormalise(x: torch.Tensor, preprocessing) -> np.ndarray:
    """The (H, W, C) image in [0, 1] that a normalised input tensor came from."""
    mean = torch.tensor(preprocessing.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).detach().cpu().numpy()


def _captum(name: str):
    """A captum attribution class by name (captum is imported when an attribution first runs)."""
    import captum.attr

    return getattr(captum.attr, name)


def superpixels(x: torch.Tensor, preprocessing, n_segments: int) -> torch.Tensor:
    """SLIC segment ids ``(1, 1, H, W)`` of one normalised input, for feature-mask perturbations."""
    from skimage.segmentation import slic

    image = _unnormalise(x, preprocessing)
    segments = slic(image, n_segments=n_segments, compactness=10, start_label=0,
                    channel_axis=-1 if image.shape[2] == 3 else None) if image.shape[2] == 3 else \
        slic(image[..., 0], n_segments=n_segments, compactness=0.1, start_label=0, channel_axis=None)
    if len(np.unique(segments)) < 2:  # a flat image gives one superpixel: fall back to a square grid
        side = max(2, int(round(np.sqrt(n_segments))))
        h, w = segments.shape
        segments = (np.arange(h)[:, None] * side // h) * side + (np.arange(w)[None, :] * side // w)
    return torch.as_tensor(segments, device=x.device, dtype=torch.long)[None, None]


@register_method("saliency")
class SaliencyMethod(Method):
    """|d score / d pixel|, maximum over colour channels (Simonyan et al.)."""

    kind = "magnitude"

    def attribute(self, model, x, targets, *, layer, preprocessing, options) -> np.ndarray:
        grads = _captum('Saliency')(model).attribute(x.detach().clone().requires_grad_(True), target=targets, abs=True)
        return grads.amax(1).detach().cpu().numpy()


@register_method("ig")
class IntegratedGradientsMethod(Method):
    """Integrated Gradients from a black (mean-coloured after normalisation: zero) baseline."""

    def attribute(self, model, x, targets, *, layer, preprocessing, options) -> np.ndarray:
        attributions = _captum('IntegratedGradients')(model).attribute(
            x.detach().clone().requires_grad_(True), baselines=torch.zeros_like(x), target=targets,
            n_steps=options.ig_steps, internal_batch_size=options.internal_batch_size)
        return attributions.sum(1).detach().cpu().numpy()


@register_method("occlusion")
class OcclusionMethod(Method):
    """Drop in the target score when a square patch is replaced by the mean colour."""

    def attribute(self, model, x, targets, *, layer, preprocessing, options) -> np.ndarray:
        side = x.shape[-1]
        window = max(2, round(side * options.occlusion_window))
        stride = max(1, round(side * options.occlusion_stride))
        with torch.no_grad():
            attributions = _captum('Occlusion')(model).attribute(
                x, target=targets, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                baselines=0.0, perturbations_per_eval=options.internal_batch_size)
        return attributions.mean(1).cpu().numpy()


class _SuperpixelMethod(Method):
    explainer = "Lime"  # a class of captum.attr

    def attribute(self, model, x, targets, *, layer, preprocessing, options) -> np.ndarray:
        out = []
        # captum samples with torch's global generator: seed it for this call only, then restore it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            for i in range(len(x)):
                mask = superpixels(x[i], preprocessing, options.n_segments)
                with torch.no_grad():
                    attributions = _captum(self.explainer)(model).attribute(
                        x[i:i + 1], target=int(targets[i]), feature_mask=mask.expand_as(x[i:i + 1]), baselines=0.0,
                        n_samples=options.n_samples, perturbations_per_eval=options.internal_batch_size)
                out.append(attributions.mean(1)[0].cpu().numpy())
        return np.stack(out)


@register_method("lime")
class LimeMethod(_SuperpixelMethod):
    """LIME over SLIC superpixels (captum's Lime, its default Lasso surrogate)."""

    explainer = "Lime"


@register_method("kernelshap")
class KernelShapMethod(_SuperpixelMethod):
    """KernelSHAP over SLIC superpixels (captum)."""

    explainer = "KernelShap"
