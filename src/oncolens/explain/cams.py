"""The CAM family, from pytorch-grad-cam: one small class per method, hooks released by ``with``.

Each method names its pytorch-grad-cam class; the library is imported when a CAM first runs (it pulls in
scikit-learn and OpenCV, which predicting alone does not need)."""

from __future__ import annotations

import numpy as np

from .registry import Method, register_method


def _gradients_start_here(module, inputs, output):
    """Make the target layer's output a leaf that requires grad: the backward pass stops there.

    A loaded bundle's parameters do not require gradients, and a CAM needs gradients only at the
    target layer, so nothing before it is differentiated (Grad-CAM then costs ~2 forward passes).
    """
    return output.detach().requires_grad_(True).clone()  # a non-leaf copy: later in-place ops stay legal


class CamMethod(Method):
    kind = "cam"
    needs_layer = True
    handles_predicted = True
    cam_class: str = "GradCAM"  # a class of pytorch_grad_cam

    def attribute(self, model, x, targets, *, layer, preprocessing, options):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam_class = getattr(pytorch_grad_cam, self.cam_class)
        layers = layer if isinstance(layer, list) else [layer]
        handles = [target.register_forward_hook(_gradients_start_here) for target in layers]  # before the CAM's hooks
        try:
            with cam_class(model=model, target_layers=layers) as cam:
                if self.cam_class == "ScoreCAM":
                    cam.batch_size = options.internal_batch_size
                wanted = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
                maps = cam(input_tensor=x, targets=wanted)
                logits = cam.outputs.detach()
        finally:
            for handle in handles:
                handle.remove()
        return np.asarray(maps, dtype=np.float32), logits


@register_method("gradcam")
class GradCamMethod(CamMethod):
    cam_class = "GradCAM"


@register_method("gradcampp")
class GradCamPlusPlusMethod(CamMethod):
    cam_class = "GradCAMPlusPlus"


@register_method("xgradcam")
class XGradCamMethod(CamMethod):
    cam_class = "XGradCAM"


@register_method("hirescam")
class HiResCamMethod(CamMethod):
    cam_class = "HiResCAM"


@register_method("layercam")
class LayerCamMethod(CamMethod):
    cam_class = "LayerCAM"


@register_method("scorecam")
class ScoreCamMethod(CamMethod):
    cam_class = "ScoreCAM"


@register_method("eigencam")
class EigenCamMethod(CamMethod):
    """Class-agnostic: the first principal component of the layer's activations."""

    cam_class = "EigenCAM"


