"""Batch norm folded into convolutions for scoring: the same outputs, every architecture."""

import pytest
import torch
from torch import nn

from oncolens.models import create_model
from oncolens.models.fuse import fold_batchnorm, inference_backbone


def _with_random_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name,size", [("tf_efficientnet_lite0", 64), ("mobilenetv3_large_100", 64),
                                       ("densenet121", 64), ("resnet50", 64), ("seed_bn_cnn", 50)])
def test_folded_backbones_score_like_the_original(name, size):
    model = _with_random_statistics(create_model(name, num_classes=3, weights="random", input_size=size))
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model.backbone, x)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) or name == "densenet121"
    with torch.inference_mode():
        expected = model.backbone(x)
        assert float((folded(x) - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    assert {n for n, _ in folded.named_modules()} >= {n for n, m in model.backbone.named_modules()
                                                     if not isinstance(m, nn.BatchNorm2d)}


def test_the_inference_copy_is_remade_when_the_weights_change():
    model = _with_random_statistics(create_model("seed_bn_cnn", num_classes=2, weights="random", input_size=50))
    first = inference_backbone(model.backbone, 50)
    assert inference_backbone(model.backbone, 50) is first
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    second = inference_backbone(model.backbone, 50)
    assert second is not first
    x = torch.randn(2, 3, 50, 50)
    with torch.inference_mode():
        assert torch.allclose(second(x), model.backbone.eval()(x), atol=1e-4)
