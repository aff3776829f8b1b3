"""Inference copies: batch norm folded into convolutions, "same" padding fixed; the same outputs, every
architecture."""

import copy

import pytest
import torch
from torch import nn

from oncolens.models import create_model, load_bundle
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


def test_same_padding_becomes_a_constant_pad_with_identical_outputs_at_every_size():
    from timm.layers import AvgPool2dSame, Conv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    from oncolens.models.fuse import fix_same_padding

    torch.manual_seed(0)
    net = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), MaxPool2dSame(3, 2), AvgPool2dSame(2, 2),
                        Conv2dSame(4, 2, 5, stride=1, dilation=2)).eval()
    fixed = copy.deepcopy(net)
    x = torch.randn(2, 3, 33, 30)  # odd and even sides: asymmetric pads
    before = [p.data_ptr() for p in fixed.parameters()]
    assert fix_same_padding(fixed, x) == 4
    assert not any(type(m) in (Conv2dSame, MaxPool2dSame, AvgPool2dSame) for m in fixed.modules())
    assert [p.data_ptr() for p in fixed.parameters()] == before  # the same parameters, not copies
    with torch.inference_mode():
        assert torch.equal(fixed(x), net(x))
        other = torch.randn(1, 3, 41, 38)  # another size is padded as the original pads it
        assert torch.equal(fixed(other), net(other))


def test_exported_tf_backbones_have_no_shape_arithmetic_left(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from oncolens.models import save_bundle
    from oncolens.models.onnx import onnx_graphs, onnx_parity

    model = _with_random_statistics(create_model("tf_efficientnet_lite0", num_classes=3, weights="random",
                                                 input_size=64))
    assert model.backbone.conv_stem.__class__.__name__ == "Conv2dSame"
    bundle = load_bundle(save_bundle(model, ["a", "b", "c"], tmp_path / "b"))
    graph = onnx.load_from_string(onnx_graphs(bundle)[0])
    ops = {node.op_type for node in graph.graph.node}
    assert "Conv" in ops and not ops & {"Shape", "Ceil", "Div"}, ops
    assert onnx_parity(bundle) < 1e-5
    assert type(bundle.root.model.backbone.conv_stem).__name__ == "Conv2dSame"  # the bundle itself unchanged
