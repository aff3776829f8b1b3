"""Foundation encoders without their real weights (none can be downloaded here): every registered encoder is
built with the SAME constructor at reduced depth and width (same tokens, same pooling), saved with random
weights in the Hugging Face cache layout (``models--ORG--NAME/snapshots/<rev>/`` with timm's ``config.json``,
the weights file in the encoder's own format, ``refs/main``), and loaded through the real code path with
``HF_HUB_OFFLINE=1``. Embedding sizes and preprocessing constants are checked against the card facts below and
the table in docs/reference/encoders.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.errors import WeightsError
from oncolens.models import create_model, get_spec, load_bundle, save_bundle
from oncolens.models.card import NON_COMMERCIAL_WARNING, model_card, render_model_card
from oncolens.models.encoders import ENCODERS, EncoderSpec, build_backbone, file_sha256, get_encoder, list_encoders

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
FROM_REPO = (None, None)  # mean/std read from the repository's preprocessor_config.json

#: the card facts, transcribed independently of the registry: hub id, input size, interpolation, (mean, std),
#: pooling, full-size embedding, register tokens, gated, non-commercial
CARDS = {
    "uni": ("MahmoodLab/UNI", 224, "bilinear", IMAGENET, "cls", 1024, 0, True, True),
    "uni2-h": ("MahmoodLab/UNI2-h", 224, "bilinear", IMAGENET, "cls", 1536, 8, True, True),
    "virchow": ("paige-ai/Virchow", 224, "bicubic", IMAGENET, "cls+mean", 2560, 0, True, False),
    "virchow2": ("paige-ai/Virchow2", 224, "bicubic", IMAGENET, "cls+mean", 2560, 4, True, True),
    "h-optimus-0": ("bioptimus/H-optimus-0", 224, "bicubic", HOPTIMUS, "cls", 1536, 4, None, False),
    "prov-gigapath": ("prov-gigapath/prov-gigapath", 224, "bicubic", IMAGENET, "cls", 1536, 0, True, True),
    "phikon-v2": ("owkin/phikon-v2", 224, "bilinear", FROM_REPO, "cls", 1024, 0, None, True),
    "dinov2-s": ("timm/vit_small_patch14_dinov2.lvd142m", 518, "bicubic", IMAGENET, "cls", 384, 0, False, False),
    "dinov2-b": ("timm/vit_base_patch14_dinov2.lvd142m", 518, "bicubic", IMAGENET, "cls", 768, 0, False, False),
    "dinov2-l": ("timm/vit_large_patch14_dinov2.lvd142m", 518, "bicubic", IMAGENET, "cls", 1024, 0, False, False),
    "rad-dino": ("microsoft/rad-dino", 518, "bicubic", FROM_REPO, "cls", 768, 0, False, False),
    "biomedclip": ("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", 224, "bicubic", CLIP, "cls", 768, 0,
                   False, False),
}
#: what the reduced copies' repositories say in preprocessor_config.json (distinct from ImageNet's, to be seen)
REPO_MEAN, REPO_STD = [0.51, 0.52, 0.53], [0.21, 0.22, 0.23]


# --- helpers ------------------------------------------------------------------------------------------------

def reduced(spec: EncoderSpec) -> EncoderSpec:
    """The same constructor at depth 1 and width 48 (4 heads), on a 2 x 2 patch grid; tokens and pooling kept."""
    size = 2 * spec.patch_size
    kwargs = {**spec.kwargs, "depth": 1, "embed_dim": 48, "num_heads": 4, "img_size": size}
    return dataclasses.replace(spec, name=f"{spec.name}-tiny", kwargs=kwargs, input_size=size, embed_dim=48)


def to_hf_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT names as transformers' Dinov2Model names them (the layout of owkin/phikon-v2's weights)."""
    out = {"embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    simple = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1",
              "mlp.fc2": "mlp.fc2"}
    for key, value in state.items():
        if key == "cls_token":
            out["embeddings.cls_token"] = value
        elif key == "pos_embed":
            out["embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            module, kind = rest.rsplit(".", 1)
            prefix = f"encoder.layer.{index}."
            if module == "attn.qkv":
                for name, part in zip(("query", "key", "value"), value.chunk(3, 0)):
                    out[f"{prefix}attention.attention.{name}.{kind}"] = part
            elif module in ("ls1", "ls2"):
                out[f"{prefix}layer_scale{module[-1]}.lambda1"] = value
            else:
                out[f"{prefix}{simple[module]}.{kind}"] = value
    return out


def checkpoint(spec: EncoderSpec, trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's weights in the layout the encoder's repository ships them in."""
    state = {k: v.detach().clone().contiguous() for k, v in trunk.state_dict().items()}
    if spec.checkpoint_format == "dinov2":  # the original DINOv2 code's names (RAD-DINO's backbone_compatible)
        return {**state, "mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    if spec.checkpoint_format == "open_clip":  # the image tower inside a whole CLIP model
        return {**{f"visual.trunk.{k}": v for k, v in state.items()},
                "visual.head.proj.weight": torch.zeros(8, state["cls_token"].shape[-1]),
                "text.transformer.embeddings.position_ids": torch.arange(4)[None], "logit_scale": torch.ones(())}
    if spec.checkpoint_format == "hf-dinov2":
        return to_hf_dinov2(state)
    return state


def write_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def save_snapshot(cache: Path, spec: EncoderSpec, trunk: torch.nn.Module, rev: str = REV) -> Path:
    """``trunk`` saved as the encoder's repository in the hub cache layout; returns the weights file."""
    repo = cache / ("models--" + spec.hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / rev
    weights = write_file(snapshot / spec.weight_files[0], checkpoint(spec, trunk))
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": spec.architecture, "num_classes": 0, "model_args": spec.kwargs,
        "pretrained_cfg": {"input_size": [3, spec.input_size, spec.input_size], "interpolation": spec.interpolation,
                           "mean": list(spec.mean or REPO_MEAN), "std": list(spec.std or REPO_STD),
                           "license": spec.licence}}))
    if spec.preprocessor_file:
        (snapshot / spec.preprocessor_file).write_text(json.dumps({"image_mean": REPO_MEAN, "image_std": REPO_STD,
                                                                   "resample": 3}))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return weights


def expected_embedding(spec: EncoderSpec, trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The card's recipe, written out: class token; or class token and the mean of the patch tokens, after the
    class and register tokens."""
    tokens = trunk.eval().forward_features(x)
    if spec.pooling == "cls":
        return tokens[:, 0]
    return torch.cat([tokens[:, 0], tokens[:, 1 + spec.reg_tokens:].mean(1)], dim=-1)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty, offline Hugging Face cache of this test's own."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def tiny(monkeypatch, name: str, cache: Path | None = None, seed: int = 0) -> tuple[EncoderSpec, torch.nn.Module]:
    """The reduced copy of encoder ``name``, registered for this test (and saved in ``cache`` when given)."""
    spec = reduced(get_encoder(name))
    monkeypatch.setitem(ENCODERS._entries, spec.name, spec)
    torch.manual_seed(seed)
    trunk = build_backbone(spec, 3, spec.input_size).trunk
    if cache is not None:
        save_snapshot(cache, spec, trunk)
    return spec, trunk


def fails_cleanly(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    text = " ".join(lines)
    for word in words:
        assert word in text, (word, text)
    return text


# --- the registry and its table -------------------------------------------------------------------------------

def test_at_least_eight_encoders_across_pathology_general_and_medical_images():
    assert set(CARDS) <= set(list_encoders()) and len(list_encoders()) >= 8
    domains = {get_encoder(n).domain for n in list_encoders()}
    assert {"pathology", "general", "radiology"} <= domains


@pytest.mark.parametrize("name", sorted(CARDS))
def test_registry_holds_the_card_facts(name):
    hub_id, size, interpolation, (mean, std), pooling, embedding, registers, gated, non_commercial = CARDS[name]
    spec = get_encoder(name)
    assert (spec.hub_id, spec.input_size, spec.interpolation, spec.pooling) == (hub_id, size, interpolation, pooling)
    assert spec.mean == (tuple(mean) if mean else None) and spec.std == (tuple(std) if std else None)
    assert (spec.embedding_dim, spec.reg_tokens, spec.gated, spec.non_commercial) == (embedding, registers, gated,
                                                                                      non_commercial)
    assert spec.card_url.startswith("https://huggingface.co/") and spec.licence
    if mean is None:
        assert spec.preprocessor_file == "preprocessor_config.json"
    if gated is None or spec.sources:
        assert spec.note or spec.sources  # what was not read on the card itself says where it came from


@pytest.mark.parametrize("name", sorted(CARDS))
def test_full_size_embedding_is_the_architectures(name):
    """The full constructor, built on the meta device (shapes only): its token width, prefix tokens and
    embedding size are the table's (cls+mean doubles the width)."""
    spec = get_encoder(name)
    with torch.device("meta"):
        backbone = build_backbone(spec, 3, spec.input_size)
    assert backbone.token_dim == spec.embed_dim
    assert backbone.num_prefix_tokens == 1 + spec.reg_tokens
    assert backbone.num_features == spec.embed_dim * (2 if spec.pooling == "cls+mean" else 1) == spec.embedding_dim
    assert backbone.trunk.patch_embed.patch_size[0] == spec.patch_size


def test_docs_table_states_every_encoders_facts():
    page = (ROOT / "docs" / "reference" / "encoders.md").read_text()
    assert "not measured" in page and "oncolens cv" in page  # and the command that measures it on a user's data
    rows = {}
    for line in page.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) > 8 and cells[0] in CARDS:
            rows[cells[0]] = cells
    assert set(rows) == set(CARDS)
    for name, cells in rows.items():
        spec = get_encoder(name)
        text = " ".join(cells)
        assert spec.hub_id in text and spec.architecture in text and str(spec.embedding_dim) in text, name
        assert str(spec.input_size) in text and spec.interpolation in text, name
        assert ("yes" if spec.gated else "no" if spec.gated is False else "unconfirmed") in cells, name
        if spec.mean:
            assert f"{spec.mean[0]}" in text, name


def test_models_command_lists_encoders_with_licence_and_gating():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["seed_cnn"]["kind"] == "model"
    assert rows["uni2-h"]["licence"] == "CC-BY-NC-ND-4.0" and rows["uni2-h"]["gated"] is True
    assert rows["uni2-h"]["non_commercial"] is True and rows["dinov2-b"]["gated"] is False
    table = runner.invoke(app, ["models"], terminal_width=300).output
    assert "virchow2" in table and "CC-BY-NC-ND-4.0" in table and "non-commercial" in table


# --- loading through the real code path ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CARDS))
def test_each_encoder_loads_offline_from_the_hub_cache(name, hub, monkeypatch):
    spec, trunk = tiny(monkeypatch, name, hub)
    model = create_model(spec.name, num_classes=3, weights="pretrained", freeze="frozen").eval()
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        embedding = model.backbone(x)
        torch.testing.assert_close(embedding, expected_embedding(spec, trunk, x))
    assert embedding.shape == (2, 48 * (2 if spec.pooling == "cls+mean" else 1)) == (2, model.backbone.num_features)
    assert model(x).shape == (2, 3) and model.backbone_frozen
    weights = hub / ("models--" + spec.hub_id.replace("/", "--")) / "snapshots" / REV / spec.weight_files[0]
    record = model.config["encoder"]
    assert (record["id"], record["revision"], record["sha256"]) == (spec.hub_id, REV, file_sha256(weights))
    pre = model.preprocessing
    _, _, interpolation, (mean, std), *_ = CARDS[name]
    assert pre.size == spec.input_size and pre.channels == 3
    assert pre.mean == tuple(mean or REPO_MEAN) and pre.std == tuple(std or REPO_STD)
    assert pre.interpolation == interpolation or (mean is None and pre.interpolation == "bicubic")  # resample 3


def test_missing_weights_are_one_line_naming_the_repository_its_gate_and_the_two_ways(hub, tmp_path, monkeypatch,
                                                                                    phantom_dir, phantom_manifest):
    from oncolens.data import save_manifest

    monkeypatch.chdir(tmp_path)
    save_manifest(phantom_manifest, tmp_path / "m.csv")
    result = runner.invoke(app, ["features", str(phantom_dir), "--model", "uni2-h", "--weights", "pretrained",
                                 "--out", "bags"])
    text = fails_cleanly(result, "MahmoodLab/UNI2-h", "is gated", "hf download MahmoodLab/UNI2-h", "--weights PATH",
                         "HF_HUB_OFFLINE", str(hub))
    assert text.count("error:") == 1
    open_one = runner.invoke(app, ["train", "m.csv", "--model", "dinov2-s", "--epochs", "1", "--runs-dir", "runs"])
    fails_cleanly(open_one, "timm/vit_small_patch14_dinov2.lvd142m", "is not gated", "--weights PATH")
    with pytest.raises(WeightsError, match="may be gated"):
        create_model("h-optimus-0", num_classes=2, weights="pretrained")


def test_weights_path_file_and_hub_layout_folders(hub, tmp_path, monkeypatch):
    """--weights PATH: the file itself, its snapshot folder, the models--ORG--NAME folder, a whole hub cache."""
    spec, trunk = tiny(monkeypatch, "virchow2")
    elsewhere = tmp_path / "copied"
    weights = save_snapshot(elsewhere, spec, trunk)
    repo = elsewhere / "models--paige-ai--Virchow2"
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        expected = expected_embedding(spec, trunk, x)
    for source in (weights, weights.parent, repo, elsewhere):
        model = create_model(spec.name, num_classes=2, weights=str(source), freeze="frozen").eval()
        with torch.no_grad():
            torch.testing.assert_close(model.backbone(x), expected)
        assert model.config["encoder"]["sha256"] == file_sha256(weights)
        assert model.config["encoder"]["revision"] == REV
    plain = write_file(tmp_path / "plain" / "virchow2.safetensors", checkpoint(spec, trunk))
    assert create_model(spec.name, num_classes=2, weights=str(plain)).config["encoder"]["revision"] is None
    with pytest.raises(WeightsError, match="holds no weights for virchow2-tiny"):
        create_model(spec.name, num_classes=2, weights=str(tmp_path / "plain" / ".."))


def test_mismatched_weights_are_refused(hub, tmp_path, monkeypatch):
    uni, _ = tiny(monkeypatch, "uni")
    _, other = tiny(monkeypatch, "uni2-h")
    wrong = write_file(tmp_path / "uni2.bin", other.state_dict())
    with pytest.raises(WeightsError, match="does not fit uni-tiny"):
        create_model(uni.name, num_classes=2, weights=str(wrong))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["features", str(tmp_path), "--model", uni.name, "--weights", str(wrong)])
    fails_cleanly(result, "does not fit uni-tiny", "unexpected", "of another shape")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="damaged.safetensors"):
        create_model(uni.name, num_classes=2, weights=str(damaged))


def test_bundle_records_the_encoder_and_refuses_other_weights(hub, tmp_path, monkeypatch):
    spec, trunk = tiny(monkeypatch, "uni", hub)
    model = create_model(spec.name, num_classes=2, weights="pretrained", freeze="frozen")
    folder = save_bundle(model, ["a", "b"], tmp_path / "bundle")
    recorded = json.loads((folder / "bundle.json").read_text())["model"]["encoder"]
    assert (recorded["id"], recorded["revision"]) == ("MahmoodLab/UNI", REV) and len(recorded["sha256"]) == 64
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # predicting needs no hub
    bundle = load_bundle(folder)
    assert bundle.model.config["encoder"]["sha256"] == recorded["sha256"]
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.backbone(x), model.eval().backbone(x))
    # the bundle's backbone as --weights: for the same encoder only
    again = create_model(spec.name, num_classes=4, weights=str(folder))
    assert again.config["encoder"]["weights_from_bundle"] == str(folder)
    _, _ = tiny(monkeypatch, "uni2-h")
    with pytest.raises(WeightsError, match="built on MahmoodLab/UNI, not on uni2-h-tiny"):
        create_model("uni2-h-tiny", num_classes=2, weights=str(folder))
    # weights whose hash differs from the record a bundle keeps are refused
    torch.manual_seed(1)
    changed = write_file(tmp_path / "changed.bin", build_backbone(spec, 3, spec.input_size).trunk.state_dict())
    with pytest.raises(WeightsError, match="not the ones the bundle was built on"):
        create_model(spec.name, num_classes=2, weights=str(changed), encoder_record=recorded)
    same = hub / "models--MahmoodLab--UNI" / "snapshots" / REV / "pytorch_model.bin"
    assert create_model(spec.name, num_classes=2, weights=str(same), encoder_record=recorded)


def test_card_carries_the_licence_and_warns_when_non_commercial(hub, tmp_path, monkeypatch):
    for name, commercial_ok in (("virchow2", False), ("dinov2-s", True)):
        spec, _ = tiny(monkeypatch, name, hub)
        model = create_model(spec.name, num_classes=2, weights="pretrained", freeze="frozen")
        model.config["name"] = name  # as a bundle built on the real encoder names it
        card = model_card(save_bundle(model, ["a", "b"], tmp_path / name))
        assert spec.licence in card["licences"]["weights"] and spec.hub_id in card["licences"]["weights"]
        assert card["licences"]["non_commercial"] is (not commercial_ok)
        assert (NON_COMMERCIAL_WARNING in card["limitations"]) is (not commercial_ok)
        markdown = render_model_card(card)
        assert ("non-commercial use only" in markdown) is (not commercial_ok)
        assert spec.hub_id in markdown and REV in markdown  # the encoder's repository and revision


# --- timm:NAME and hf-hub:ORG/NAME ----------------------------------------------------------------------------

def test_any_timm_model_by_name_with_weights_from_the_cache(hub):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    repo = hub / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    write_file(repo / "snapshots" / REV / "model.safetensors", source.state_dict())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    model = create_model("timm:vit_tiny_patch16_224", num_classes=2, weights="pretrained", input_size=32).eval()
    assert model.backbone.num_features == 192 and model.preprocessing.interpolation == "bicubic"
    assert model.preprocessing.mean == (0.5, 0.5, 0.5)  # timm's pretrained configuration of the tag
    assert model.config["encoder"]["id"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the position embeddings were resampled to the 2 x 2 grid of 32 px
        assert model(x).shape == (1, 2) and torch.isfinite(model.backbone(x)).all()
    assert get_spec("timm:resnet18").encoder.pooling == "timm"


def test_hub_repository_by_name_rebuilds_from_its_bundle_without_the_hub(hub, tmp_path, monkeypatch):
    config = {"architecture": "vit_small_patch16_224", "num_classes": 0,
              "model_args": {"depth": 1, "embed_dim": 48, "num_heads": 4, "img_size": 32, "reg_tokens": 2},
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2],
                                 "interpolation": "bicubic", "license": "cc-by-nc-4.0"}}
    import timm

    trunk = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **config["model_args"])
    snapshot = hub / "models--someone--tiny-vit" / "snapshots" / REV
    write_file(snapshot / "model.safetensors", trunk.state_dict())
    (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(REV)
    model = create_model("hf-hub:someone/tiny-vit", num_classes=2, weights="pretrained", freeze="frozen")
    assert model.preprocessing.size == 32 and model.preprocessing.mean == (0.4, 0.4, 0.4)
    assert model.backbone.num_features == 48
    folder = save_bundle(model, ["a", "b"], tmp_path / "bundle")
    assert model_card(folder)["licences"]["non_commercial"] is True
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    bundle = load_bundle(folder)  # the record's timm configuration rebuilds it
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), model.eval()(x))
    with pytest.raises(WeightsError, match="someone/other"):
        create_model("hf-hub:someone/other", num_classes=2)
    # the repository's folder as --weights needs no cache either
    assert create_model("hf-hub:someone/tiny-vit", num_classes=2, weights=str(snapshot)).backbone.num_features == 48
    registered = get_spec("hf-hub:MahmoodLab/UNI2-h")
    assert registered.encoder.name == "uni2-h" and registered.input_size == 224


# --- end to end ---------------------------------------------------------------------------------------------

def test_frozen_probe_train_then_predict_on_a_reduced_encoder(hub, tmp_path, monkeypatch, phantom_manifest,
                                                              phantom_dir):
    from oncolens.data import save_manifest, split

    spec, _ = tiny(monkeypatch, "virchow2", hub)  # class + mean of patch tokens, 4 register tokens skipped
    monkeypatch.chdir(tmp_path)
    save_manifest(split(phantom_manifest, test=0.25, val=0.25, seed=0), tmp_path / "m.csv")
    result = runner.invoke(app, ["train", "m.csv", "--model", spec.name, "--epochs", "1", "--batch-size", "16",
                                 "--runs-dir", "runs", "--name", "r", "--cache-dir", "cache"])
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load(Path("runs/r/config.yaml").read_text())
    assert saved["freeze"] == "frozen" and saved["weights"] in ("imagenet", "pretrained")
    bundle = json.loads(Path("runs/r/bundle/bundle.json").read_text())
    assert bundle["model"]["encoder"]["id"] == "paige-ai/Virchow2" and bundle["preprocessing"]["size"] == 28
    assert bundle["preprocessing"]["interpolation"] == "bicubic"
    card = json.loads(Path("runs/r/bundle/model_card.json").read_text())
    assert "CC-BY-NC-ND-4.0" in card["licences"]["weights"] and card["licences"]["non_commercial"] is True
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # the bundle holds the encoder: no hub needed
    images = sorted(p for p in phantom_dir.rglob("*.png") if not p.name.endswith(".mask.png"))[:4]
    result = runner.invoke(app, ["predict", "runs/r/bundle", *map(str, images), "--out", "p.csv"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    assert len(pd.read_csv("p.csv")) == 4


def test_train_takes_a_hub_layout_folder_as_weights(hub, tmp_path, monkeypatch, phantom_manifest):
    from oncolens.data import save_manifest, split

    spec, trunk = tiny(monkeypatch, "uni")
    weights = save_snapshot(tmp_path / "copied", spec, trunk)
    monkeypatch.chdir(tmp_path)
    save_manifest(split(phantom_manifest, test=0.25, val=0.25, seed=0), tmp_path / "m.csv")
    result = runner.invoke(app, ["train", "m.csv", "--model", spec.name, "--epochs", "1", "--runs-dir", "runs",
                                 "--name", "r", "--weights", str(weights.parent)])
    assert result.exit_code == 0, result.output


def test_hf_home_locates_the_cache(tmp_path, monkeypatch):
    spec, trunk = tiny(monkeypatch, "dinov2-s")
    save_snapshot(tmp_path / "home" / "hub", spec, trunk)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model(spec.name, num_classes=2, weights="pretrained")
    assert model.config["encoder"]["revision"] == REV and model.backbone.num_features == 48


def test_a_gated_repository_refused_online_is_one_line_saying_so(tmp_path, monkeypatch):
    """Online, without access granted: the hub's GatedRepoError becomes the same one line (never a traceback)."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from oncolens.models import encoders

    def refused(*args, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # as the hub raises it, without building an HTTP response
        Exception.__init__(error, "403 Client Error: access to model MahmoodLab/UNI is restricted")
        raise error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(encoders, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(WeightsError) as caught:
        create_model("uni", num_classes=2, weights="pretrained")
    message = str(caught.value)
    assert "\n" not in message and "was not granted" in message and "MahmoodLab/UNI is gated" in message
    assert "hf auth login" in message and "--weights PATH" in message
