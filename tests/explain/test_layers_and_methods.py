import numpy as np
import pytest
import torch

from oncolens.explain import ExplainOptions, explain, find_target_layer, list_methods
from oncolens.models import create_model, list_models

EXPECTED_LAYERS = {
    "seed_cnn": "backbone.features",
    "seed_bn_cnn": "backbone.features",
    "resnet50": "backbone.layer4",
    "densenet121": "backbone.features",
    "tf_efficientnet_lite0": "backbone.bn2",
    "tf_efficientnet_lite1": "backbone.bn2",
    "tf_efficientnet_lite2": "backbone.bn2",
    "mobilenetv3_large_100": "backbone.blocks",
    "vgg16": "backbone.features",
    "alexnet": "backbone.features",
}
FAST = ExplainOptions(internal_batch_size=64, n_samples=12, n_segments=8, ig_steps=4, occlusion_window=0.5,
                      occlusion_stride=0.5)
ALL_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "scorecam", "eigencam", "saliency", "ig",
               "occlusion", "lime", "kernelshap"]


def test_all_issue_methods_registered():
    assert set(ALL_METHODS) <= set(list_methods())


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_auto_target_layer_at_default_size(name):
    model = create_model(name, num_classes=2)
    layer_name, layer = find_target_layer(model, model.preprocessing.size, model.preprocessing.channels)
    assert layer_name == EXPECTED_LAYERS[name]
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model.eval()(torch.zeros(1, model.preprocessing.channels, model.preprocessing.size, model.preprocessing.size))
    handle.remove()
    assert len(shapes[0]) == 4 and shapes[0][2] * shapes[0][3] > 1


def test_every_registered_model_is_in_the_layer_table():
    assert set(list_models()) <= set(EXPECTED_LAYERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_every_method_gives_finite_map_of_input_size(name):
    torch.manual_seed(0)
    size = 64
    model = create_model(name, num_classes=3, input_size=size).eval()
    x = torch.randn(2, model.preprocessing.channels, size, size)
    for method in ALL_METHODS:
        results = explain(model, x, method=method, options=FAST)
        assert len(results) == 2, method
        for e in results:
            assert e.heatmap.shape == (size, size), (method, e.heatmap.shape)
            assert e.raw.shape == (size, size), (method, e.raw.shape)
            assert np.isfinite(e.heatmap).all() and np.isfinite(e.raw).all(), method
            assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1, method


def test_layer_override_and_bad_layer():
    model = create_model("seed_cnn", num_classes=2, input_size=64).eval()
    x = torch.randn(1, 1, 64, 64)
    e = explain(model, x, method="gradcam", target_layer="backbone.features.3")[0]
    assert e.layer == "backbone.features.3" and e.heatmap.shape == (64, 64)
    with pytest.raises(ValueError, match="no layer"):
        explain(model, x, method="gradcam", target_layer="backbone.nope")


def test_targets_by_name_index_and_errors():
    model = create_model("seed_cnn", num_classes=2, input_size=64).eval()
    x = torch.randn(1, 1, 64, 64)
    by_name = explain(model, x, method="saliency", target="b", classes=["a", "b"])[0]
    by_index = explain(model, x, method="saliency", target=1, classes=["a", "b"])[0]
    assert by_name.target_class == by_index.target_class == "b"
    np.testing.assert_allclose(by_name.raw, by_index.raw)
    with pytest.raises(ValueError, match="target"):
        explain(model, x, method="saliency", target="zzz", classes=["a", "b"])
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(model, x, method="magic")
