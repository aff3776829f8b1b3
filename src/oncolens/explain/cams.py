"""The CAM family, from pytorch-grad-cam: one small class per method, hooks released by ``with``."""

from __future__ import annotations

import numpy as np

from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .registry import Method, register_method


class CamMethod(Method):
    kind = "cam"
    needs_layer = True
    cam_class: type = GradCAM

    def attribute(self, model, x, targets, *, layer, preprocessing, options) -> np.ndarray:
        # parameters of a loaded bundle do not require gradients: gradients flow from the input instead
        x = x.detach().clone().requires_grad_(True)
        with self.cam_class(model=model, target_layers=[layer]) as cam:
            if hasattr(cam, "batch_size") or self.cam_class is ScoreCAM:
                cam.batch_size = options.internal_batch_size
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return np.asarray(maps, dtype=np.float32)


@register_method("gradcam")
class GradCamMethod(CamMethod):
    cam_class = GradCAM


@register_method("gradcampp")
class GradCamPlusPlusMethod(CamMethod):
    cam_class = GradCAMPlusPlus


@register_method("xgradcam")
class XGradCamMethod(CamMethod):
    cam_class = XGradCAM


@register_method("hirescam")
class HiResCamMethod(CamMethod):
    cam_class = HiResCAM


@register_method("layercam")
class LayerCamMethod(CamMethod):
    cam_class = LayerCAM


@register_method("scorecam")
class ScoreCamMethod(CamMethod):
    cam_class = ScoreCAM


@register_method("eigencam")
class EigenCamMethod(CamMethod):
    """Class-agnostic: the first principal component of the layer's activations."""

    cam_class = EigenCAM


