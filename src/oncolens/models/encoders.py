"""Foundation encoders: pathology, general self-supervised and medical image encoders as frozen backbones.

Each encoder is one :class:`EncoderSpec` registered with :func:`register_encoder`: the facts of its own model
card (hub repository, timm architecture and constructor arguments, input size, resize, mean/std, which tokens
form the embedding, licence and access). ``create_model`` accepts three kinds of names besides the registered
CNNs, all built here as an :class:`EncoderBackbone` whose forward returns the embedding:

- an encoder's name (``uni``, ``uni2-h``, ``virchow2``, ``h-optimus-0``, ``dinov2-b``, ``rad-dino``...);
- ``timm:NAME``: any timm model, pooled as timm pools it, with the pretrained weights timm names for it;
- ``hf-hub:ORG/NAME``: a hub repository with a timm ``config.json`` (a registered encoder's repository is
  that encoder).

Weights come from the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``; nothing is downloaded when
``HF_HUB_OFFLINE`` is set or the hub cannot be reached) or from a local file or folder (``weights=PATH``).
Missing or gated weights are one :class:`~oncolens.models.pretrained.WeightsUnavailable` line that names the
repository, says whether it is gated and gives the two ways to provide them; weights that do not fit are
refused. What was loaded (repository, revision, SHA-256 of the file) is returned as a record that the model's
configuration, and so its bundle, keeps.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from ..errors import ConfigError
from ..registry import Registry
from .pretrained import WeightsUnavailable, hub_reachable, load_state_dict_file
from .registry import ModelSpec, register_name_resolver

__all__ = ["EncoderSpec", "EncoderBackbone", "ENCODERS", "register_encoder", "get_encoder", "list_encoders",
           "encoder_table", "encoder_of", "hub_cache_dir", "hub_offline", "check_weights_record", "build_backbone",
           "locate_weights", "load_located", "load_encoder_weights", "file_sha256", "TIMM_PREFIX", "HUB_PREFIX"]

TIMM_PREFIX, HUB_PREFIX = "timm:", "hf-hub:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
POOLINGS = ("cls", "cls+mean", "timm")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder's model card says: where its weights are, how to build it, how to feed it, which tokens
    form its embedding, and under which terms it may be used. ``kwargs`` are timm constructor arguments, JSON
    values only (``mlp_layer``/``act_layer`` by name: ``SwiGLUPacked``, ``SiLU``)."""

    name: str
    hub_id: str
    architecture: str
    kwargs: dict
    input_size: int
    interpolation: str
    mean: tuple[float, ...] | None  # None: read from the repository's ``preprocessor_file``
    std: tuple[float, ...] | None
    pooling: str  # cls: the class token; cls+mean: class token and mean of patch tokens; timm: timm's own pooling
    embed_dim: int  # the width of one token (the embedding is twice that for cls+mean)
    licence: str
    gated: bool | None  # None: could not be confirmed here
    non_commercial: bool
    card_url: str
    domain: str = "pathology"
    resize: str = ""  # the card's resize/crop, in its own terms
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    checkpoint_format: str = "timm"  # timm | dinov2 (the original DINOv2 code's) | open_clip | hf-dinov2 (transformers)
    preprocessor_file: str | None = None
    sources: tuple[str, ...] = ()  # further pages the facts were checked against
    note: str = ""  # what could not be confirmed, and choices made here
    description: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"encoder {self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"encoder {self.name}: interpolation must be one of {INTERPOLATIONS}")

    @property
    def embedding_dim(self) -> int:
        """The length of the embedding the backbone returns at full size."""
        return self.embed_dim * (2 if self.pooling == "cls+mean" else 1)

    @property
    def reg_tokens(self) -> int:
        """Register tokens (skipped by the pooling): the constructor's, else the architecture's (``_reg4_``)."""
        if "reg_tokens" in self.kwargs:
            return int(self.kwargs["reg_tokens"] or 0)
        match = re.search(r"_reg(\d+)_", self.architecture)
        return int(match.group(1)) if match else 0

    @property
    def patch_size(self) -> int | None:
        size = self.kwargs.get("patch_size")
        if size is None:
            match = re.search(r"patch(\d+)", self.architecture)
            size = int(match.group(1)) if match else None
        return size

    @property
    def tokens(self) -> str:
        """Which tokens form the embedding, in words."""
        if self.pooling == "timm":
            return "timm's own pooling (the model's global_pool)"
        skipped = f"; the {self.reg_tokens} register tokens are skipped" if self.reg_tokens else ""
        if self.pooling == "cls":
            return "class token" + skipped
        return "class token concatenated with the mean of the patch tokens" + skipped

    def timm_kwargs(self, input_size: int | None = None) -> dict:
        """The constructor arguments with layers resolved to classes (and ``img_size`` set to ``input_size``
        when the architecture takes one)."""
        import timm.layers

        out = dict(self.kwargs)
        if isinstance(out.get("mlp_layer"), str):
            name = out["mlp_layer"]
            if not hasattr(timm.layers, name):
                raise ConfigError(f"encoder {self.name}: timm has no MLP layer {name!r}")
            out["mlp_layer"] = getattr(timm.layers, name)
        if isinstance(out.get("act_layer"), str) and hasattr(nn, out["act_layer"]):
            out["act_layer"] = getattr(nn, out["act_layer"])
        if input_size is not None and "img_size" in out:
            out["img_size"] = int(input_size)
        return out


class EncoderBackbone(nn.Module):
    """A timm model (``trunk``) whose forward returns the encoder's embedding: the class token, the class
    token and the mean of the patch tokens (register tokens skipped), or timm's own pooling."""

    def __init__(self, trunk: nn.Module, pooling: str):
        super().__init__()
        self.trunk = trunk
        self.pooling = pooling
        if pooling == "timm":
            width = getattr(trunk, "head_hidden_size", None) or trunk.num_features
        else:
            width = getattr(trunk, "embed_dim", None) or trunk.num_features
        self.token_dim = int(width)
        self.num_features = self.token_dim * (2 if pooling == "cls+mean" else 1)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens."""
        return int(getattr(self.trunk, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "timm":
            out = self.trunk(x)
            return out[:, 0] if out.ndim == 3 else out  # a model without global pooling returns its tokens
        tokens = self.trunk.forward_features(x)
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.num_prefix_tokens:].mean(1)], dim=-1)


ENCODERS: Registry[EncoderSpec] = Registry("encoder")


def register_encoder(spec: EncoderSpec, override: bool = False) -> EncoderSpec:
    """Make ``spec`` a model name everywhere a backbone is named (``create_model``, ``--model``)."""
    return ENCODERS.register(spec.name, spec, override)


def get_encoder(name: str) -> EncoderSpec:
    return ENCODERS.get(name)


def list_encoders() -> list[str]:
    return ENCODERS.names()


def encoder_of(model_name: str | None) -> EncoderSpec | None:
    """The encoder a model name builds on (a registered encoder, or a ``hf-hub:`` name of one), else None."""
    if not model_name:
        return None
    if model_name in ENCODERS:
        return ENCODERS.get(model_name)
    if model_name.startswith(HUB_PREFIX):
        return _registered_by_repo(model_name[len(HUB_PREFIX):])
    return None


def _registered_by_repo(repo: str) -> EncoderSpec | None:
    for spec in ENCODERS.values():
        if spec.hub_id.lower() == repo.lower():
            return spec
    return None


# --- the Hugging Face cache -------------------------------------------------------------------------------

def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process uses, from the environment as it is now (``HF_HUB_CACHE``,
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub, ~/.cache/huggingface/hub)."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(os.path.expandvars(env[key])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether the environment forbids downloads (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set true)."""
    return any(str(os.environ.get(key, "")).upper() in ("1", "ON", "YES", "TRUE")
               for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _revision_of(path: Path) -> str | None:
    """The snapshot (commit hash) a file of a hub-layout folder belongs to."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _unavailable(what: str, repo: str, gated: bool | None, reason: str) -> WeightsUnavailable:
    """The one line that says the weights of ``repo`` cannot be had and the two ways to provide them."""
    access = {True: f"{repo} is gated: accept its terms at https://huggingface.co/{repo} and log in (`hf auth login`)",
              False: f"{repo} is not gated",
              None: f"{repo} may be gated (check https://huggingface.co/{repo})"}[gated]
    return WeightsUnavailable(
        f"{what}: {reason}. {access}. Provide the weights either way: on a machine with internet run "
        f"`hf download {repo}` (older hubs: `huggingface-cli download {repo}`) and copy its cache folder "
        f"{_repo_folder(repo)} into {hub_cache_dir()}; or pass --weights PATH (its weights file, or a folder in "
        "the hub's layout)")


def fetch_hub_file(repo: str, filenames: tuple[str, ...], gated: bool | None, what: str) -> tuple[Path, str | None]:
    """The first of ``filenames`` of ``repo`` in the hub cache (downloaded only when the environment allows it
    and the hub can be reached), and its revision; else :class:`WeightsUnavailable`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    cache = hub_cache_dir()
    offline = hub_offline()
    online = not offline and hub_reachable()
    problems: list[str] = []
    for filename in filenames:
        try:
            path = Path(hf_hub_download(repo, filename, cache_dir=cache, local_files_only=not online))
            return path, _revision_of(path)
        except GatedRepoError:
            raise _unavailable(what, repo, True, f"access to {repo} was not granted to this machine's Hugging Face "
                                                 "token") from None
        except RepositoryNotFoundError:
            raise _unavailable(what, repo, gated, f"the hub does not show {repo} to this machine (a gated or "
                                                  "private repository needs a token)") from None
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue
        except (HfHubHTTPError, OSError, ValueError) as exc:  # network trouble, a damaged cache entry
            problems.append(" ".join(str(exc).split())[:200])
    names = " or ".join(filenames)
    where = "downloads are off here (HF_HUB_OFFLINE)" if offline else (
        "huggingface.co cannot be reached" if not online else f"the hub has no {names} in it")
    reason = f"{names} of {repo} is not in the Hugging Face cache ({cache}) and {where}"
    if problems:
        reason += f" ({problems[0]})"
    raise _unavailable(what, repo, gated, reason)


# --- files, folders, bundles ------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    """The SHA-256 of a weights file (remembered per path, size and modification time: a 4 GB file is read
    once per process)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256(str(resolved), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_weights(spec: EncoderSpec, path: Path) -> tuple[Path, str | None]:
    """The weights file a local ``path`` names: the file itself; in a folder, one of the spec's weight files
    directly (a snapshot, or ``hf download --local-dir``), in ``snapshots/<revision>/`` (a ``models--ORG--NAME``
    folder; ``refs/main`` says which) or in ``models--ORG--NAME/`` (a hub cache)."""
    if path.is_file():
        return path, _revision_of(path)
    for name in spec.weight_files:
        if (path / name).is_file():
            return path / name, _revision_of(path / name)
    repo_dir = path if (path / "snapshots").is_dir() else path / _repo_folder(spec.hub_id)
    snapshots = repo_dir / "snapshots"
    if snapshots.is_dir():
        ref = repo_dir / "refs" / "main"
        revisions = [ref.read_text().strip()] if ref.is_file() else sorted(p.name for p in snapshots.iterdir())
        for revision in revisions:
            for name in spec.weight_files:
                if (snapshots / revision / name).is_file():
                    return snapshots / revision / name, revision
    raise WeightsUnavailable(
        f"{path} holds no weights for {spec.name} ({spec.hub_id}): looked for {' or '.join(spec.weight_files)} in "
        f"it, in snapshots/<revision>/ (a {_repo_folder(spec.hub_id)} folder) and in {_repo_folder(spec.hub_id)}/ "
        "(a hub cache)")


def _read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except WeightsUnavailable:
        raise
    except Exception as exc:  # a damaged or truncated file
        raise WeightsUnavailable(f"{what}: cannot read {path} ({' '.join(str(exc).split())[:200]})") from None


def _hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``Dinov2Model`` state dict in timm's ViT names (q, k and v joined into qkv)."""
    state = {(k[len("dinov2."):] if k.startswith("dinov2.") else k): v for k, v in state.items()}
    names = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2"}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer."):].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module.startswith("attention.attention."):
                qkv.setdefault((int(index), kind), {})[module.rsplit(".", 1)[1]] = value
            elif module in ("layer_scale1", "layer_scale2"):
                out[f"blocks.{index}.ls{module[-1]}.gamma"] = value
            elif module in names:
                out[f"blocks.{index}.{names[module]}.{kind}"] = value
            else:
                out[key] = value  # left as it is: the strict load below names it
        elif key != "embeddings.mask_token":
            out[key] = value
    for (index, kind), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _convert(spec: EncoderSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if spec.checkpoint_format == "hf-dinov2":
        return _hf_dinov2_to_timm(state)
    if spec.checkpoint_format == "open_clip":  # the image tower of an OpenCLIP model is a timm model (its trunk)
        for prefix in ("visual.trunk.", "module.visual.trunk."):
            if any(k.startswith(prefix) for k in state):
                return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_into(trunk: nn.Module, state: dict[str, torch.Tensor], spec: EncoderSpec, path: Path) -> None:
    """Load ``state`` into ``trunk`` with every tensor accounted for (classifier heads aside); anything else is
    refused in one line."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(trunk, VisionTransformer):  # DINOv2 / OpenCLIP names, position embeddings of another size
        try:
            state = checkpoint_filter_fn(dict(state), trunk)
        except Exception as exc:  # shapes too far apart to resample
            raise WeightsUnavailable(f"{path} does not fit {spec.name} ({spec.hub_id}): "
                                     f"{' '.join(str(exc).split())[:200]}") from None
    own = trunk.state_dict()
    classifier = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier)) + ("head.",)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith(heads)]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise WeightsUnavailable(f"{path} does not fit {spec.name} ({spec.architecture}, {spec.hub_id}): "
                                 + "; ".join(p for p in parts if p))
    trunk.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def _preprocessor(path: Path, spec: EncoderSpec) -> dict:
    """Mean and std from the repository's image-processor file (transformers' ``preprocessor_config.json``)."""
    try:
        config = json.loads(path.read_text())
        mean, std = [float(x) for x in config["image_mean"]], [float(x) for x in config["image_std"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsUnavailable(
            f"{spec.name}: its mean and std come from {spec.preprocessor_file} in {spec.hub_id}, which is missing or "
            f"unreadable next to the weights ({path}: {exc.__class__.__name__}); pass the repository's folder, not "
            "the weights file alone") from None
    if len(mean) != 3 or len(std) != 3:
        raise WeightsUnavailable(f"{path}: expected three image_mean and image_std values")
    out: dict[str, Any] = {"mean": mean, "std": std}
    if config.get("resample") in (2, 3):  # PIL's codes: 2 bilinear, 3 bicubic
        out["interpolation"] = "bicubic" if config["resample"] == 3 else "bilinear"
    return out


def _bundle_backbone(spec: EncoderSpec, backbone: nn.Module, folder: Path) -> dict:
    """The backbone weights of an oncolens bundle built on this encoder, and the record it keeps."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / "bundle.json").read_text())
        model = info["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsUnavailable(f"{folder}: unreadable bundle.json ({exc.__class__.__name__})") from None
    record = model.get("encoder") if isinstance(model, dict) else None
    if not isinstance(record, dict) or record.get("id") != spec.hub_id:
        built_on = record.get("id") if isinstance(record, dict) else f"{model.get('name')} (no encoder)"
        raise WeightsUnavailable(f"{folder} is a bundle built on {built_on}, not on {spec.name} ({spec.hub_id}): "
                                 "its weights are not this encoder's")
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise WeightsUnavailable(f"{folder / 'model.safetensors'}: unreadable ({exc})") from None
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise WeightsUnavailable(f"{folder}: its backbone does not fit {spec.name} at this input size")
    backbone.load_state_dict(state, strict=True)
    return {**record, "weights_from_bundle": str(folder)}


@dataclass(frozen=True)
class LocatedWeights:
    """Where an encoder's weights were found, before anything is built: a weights file (with its revision when
    it sits in a hub-layout folder) or an oncolens bundle folder built on the encoder."""

    path: Path
    revision: str | None
    origin: str  # hub cache | local file | bundle


def locate_weights(spec: EncoderSpec, source: str | Path | None = None) -> LocatedWeights:
    """Find ``spec``'s weights: in the hub cache (``source`` None; downloaded only when the environment allows
    it) or at a local file or folder; :class:`WeightsUnavailable` in one line when they cannot be had."""
    what = f"{spec.name} weights"
    if source is None and not spec.hub_id:
        raise WeightsUnavailable(f"{what}: timm names no hub weights for {spec.architecture}; use weights=random or "
                                 "a local file (--weights PATH)")
    if source is None:
        path, revision = fetch_hub_file(spec.hub_id, spec.weight_files, spec.gated, what)
        return LocatedWeights(path, revision, "hub cache")
    local = Path(source).expanduser()
    if not local.exists():
        raise WeightsUnavailable(f"weights not found: {local}")
    if local.is_dir() and (local / "bundle.json").is_file():
        return LocatedWeights(local, None, "bundle")
    path, revision = _local_weights(spec, local)
    return LocatedWeights(path, revision, "local file")


def load_located(spec: EncoderSpec, backbone: EncoderBackbone, found: LocatedWeights) -> dict:
    """Load the weights :func:`locate_weights` found into ``backbone``; return the record of what was loaded:
    repository, revision, file, SHA-256 (a bundle's own record for a bundle folder)."""
    if found.origin == "bundle":
        return _bundle_backbone(spec, backbone, found.path)
    state = _convert(spec, _read_state(found.path, f"{spec.name} weights"))
    _load_into(backbone.trunk, state, spec, found.path)
    record = {"id": spec.hub_id, "encoder": spec.name, "revision": found.revision, "file": found.path.name,
              "sha256": file_sha256(found.path), "source": found.origin}
    if spec.preprocessor_file:
        record["preprocessing"] = _preprocessor(found.path.parent / spec.preprocessor_file, spec)
    if spec.name.startswith(HUB_PREFIX) and spec.pooling == "timm":  # a hub repository: rebuilt from this record
        record["timm_config"] = {"architecture": spec.architecture, "model_args": spec.kwargs,
                                 "pretrained_cfg": {"input_size": [3, spec.input_size, spec.input_size],
                                                    "mean": list(spec.mean or IMAGENET_MEAN),
                                                    "std": list(spec.std or IMAGENET_STD),
                                                    "interpolation": spec.interpolation, "license": spec.licence},
                                 "num_features": spec.embed_dim}
    return record


def load_encoder_weights(spec: EncoderSpec, backbone: EncoderBackbone, source: str | Path | None = None) -> dict:
    """Load ``spec``'s pretrained weights into ``backbone``: from the hub cache (``source`` None) or from a local
    file or folder (a bundle folder built on the same encoder gives its backbone); return the record of what was
    loaded (:func:`load_located`)."""
    return load_located(spec, backbone, locate_weights(spec, source))


def check_weights_record(loaded: dict | None, expected: dict | None, what: str) -> None:
    """Refuse weights whose record differs from the one a bundle keeps (another repository or another file)."""
    if not expected or not isinstance(loaded, dict) or not expected.get("sha256"):
        return
    if loaded.get("id") != expected.get("id") or loaded.get("sha256") != expected.get("sha256"):
        raise WeightsUnavailable(
            f"{what}: these weights ({loaded.get('id')}, {loaded.get('file')}, "
            f"sha256 {str(loaded.get('sha256'))[:12]}) "
            f"are not the ones the bundle was built on ({expected.get('id')} revision {expected.get('revision')}, "
            f"sha256 {str(expected.get('sha256'))[:12]}); use those weights, or train a new bundle on these")


# --- specs for create_model -------------------------------------------------------------------------------

def build_backbone(spec: EncoderSpec, in_chans: int, input_size: int) -> EncoderBackbone:
    """``spec``'s timm model, unweighted, at ``input_size``, returning its embedding."""
    import timm

    if in_chans != 3:
        raise ConfigError(f"{spec.name} reads colour images (3 channels); greyscale images are read as colour, "
                          "so leave --channels unset")
    kwargs = spec.timm_kwargs(input_size)
    kwargs.update(num_classes=0, pretrained=False)
    try:
        trunk = timm.create_model(spec.architecture, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"{spec.name}: timm cannot build {spec.architecture} with {spec.kwargs} "
                          f"({' '.join(str(exc).split())[:200]})") from None
    return EncoderBackbone(trunk, spec.pooling)


def model_spec(spec: EncoderSpec, name: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` that makes ``spec`` a backbone for ``create_model``: pretrained weights are its
    default (``weights=imagenet`` or ``pretrained`` means the encoder's own), a path loads a local copy."""
    return ModelSpec(
        name=name or spec.name, source=f"hub:{spec.hub_id}" if spec.hub_id else "timm",
        build_backbone=lambda c, s: build_backbone(spec, c, s),
        description=spec.description or f"{spec.architecture} from {spec.hub_id}",
        input_size=spec.input_size, channels=3, mean=tuple(spec.mean or IMAGENET_MEAN),
        std=tuple(spec.std or IMAGENET_STD), default_head="linear",
        load_imagenet=lambda backbone, c: load_encoder_weights(spec, backbone),
        imagenet_offline=True,  # the encoder's own weights are its default: missing ones are an error, never random
        tags=("encoder",), channels_last_on_cpu=False,
        load_weights=lambda backbone, path: load_encoder_weights(spec, backbone, path),
        interpolation=spec.interpolation, encoder=spec)


def _timm_spec(name: str) -> EncoderSpec:
    import timm

    arch = name[len(TIMM_PREFIX):]
    if not arch or not timm.is_model(arch.split(".")[0]):
        raise ConfigError(f"timm has no model {arch!r} (timm {timm.__version__}; "
                          "`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists them)")
    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    kwargs = {"img_size": size} if cfg.get("fixed_input_size") else {}
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in INTERPOLATIONS else "bilinear"
    return EncoderSpec(
        name=name, hub_id=cfg.get("hf_hub_id") or "", architecture=arch, kwargs=kwargs, input_size=size,
        interpolation=interpolation, mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(cfg.get("std") or IMAGENET_STD), pooling="timm", embed_dim=0,
        licence=cfg.get("license") or "see the timm model card", gated=False,
        non_commercial="nc" in str(cfg.get("license") or "").lower().split("-"),
        card_url=f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else "",
        domain="general", weight_files=((cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename")
                                        else ("model.safetensors", "pytorch_model.bin")),
        description=f"timm {arch}")


def _hub_spec(name: str, record: dict | None) -> EncoderSpec:
    repo = name[len(HUB_PREFIX):]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ConfigError(f"{name!r}: a hub model is named hf-hub:ORG/NAME")
    config = (record or {}).get("timm_config")
    if not isinstance(config, dict):
        path, _ = fetch_hub_file(repo, ("config.json",), None, f"{name} configuration")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(f"{path}: unreadable config.json ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{repo}: its config.json is not timm's (no 'architecture'); it cannot be built with timm")
    pretrained = config.get("pretrained_cfg") or {}
    args = dict(config.get("model_args") or {})
    size = int((pretrained.get("input_size") or (3, args.get("img_size") or 224, 0))[1])
    if pretrained.get("fixed_input_size") or "img_size" in args:
        args.setdefault("img_size", size)
    interpolation = pretrained.get("interpolation") if pretrained.get("interpolation") in INTERPOLATIONS else "bilinear"
    licence = str(pretrained.get("license") or "see the model card")
    return EncoderSpec(
        name=name, hub_id=repo, architecture=config["architecture"], kwargs=args, input_size=size,
        interpolation=interpolation, mean=tuple(pretrained.get("mean") or IMAGENET_MEAN),
        std=tuple(pretrained.get("std") or IMAGENET_STD), pooling="timm",
        embed_dim=int(config.get("num_features") or 0),
        licence=licence, gated=None, non_commercial="nc" in re.split(r"[-_ ]", licence.lower()),
        card_url=f"https://huggingface.co/{repo}", domain="unknown",
        description=f"{config['architecture']} from {repo}")


def local_hub_config(source: str | Path | None) -> dict | None:
    """``{"timm_config": ...}`` from the timm ``config.json`` beside a local weights file or in a folder in the
    hub's layout (so ``hf-hub:ORG/NAME`` with ``--weights FOLDER`` needs no cache), else None."""
    if not source or str(source) in ("random", "imagenet", "pretrained", "auto"):
        return None
    path = Path(source).expanduser()
    folder = path.parent if path.is_file() else path
    candidates = [folder / "config.json"]
    if (folder / "snapshots").is_dir():
        ref = folder / "refs" / "main"
        revisions = ([ref.read_text().strip()] if ref.is_file()
                     else sorted(p.name for p in (folder / "snapshots").iterdir()))
        candidates += [folder / "snapshots" / r / "config.json" for r in revisions]
    for candidate in candidates:
        try:
            config = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and isinstance(config.get("architecture"), str):
            return {"timm_config": config}
    return None


def _resolve(name: str, record: dict | None = None) -> ModelSpec | None:
    if name in ENCODERS:
        return model_spec(ENCODERS.get(name))
    if name.startswith(TIMM_PREFIX):
        return model_spec(_timm_spec(name))
    if name.startswith(HUB_PREFIX):
        registered = _registered_by_repo(name[len(HUB_PREFIX):])
        return model_spec(registered, name=name) if registered else model_spec(_hub_spec(name, record))
    return None


def _hint() -> str:
    return (f"foundation encoders: {', '.join(ENCODERS.names())}; any timm model as timm:NAME; a hub repository "
            "with a timm config as hf-hub:ORG/NAME")


_resolve.hint = _hint  # type: ignore[attr-defined]
register_name_resolver(_resolve)


def encoder_table() -> list[dict[str, Any]]:
    """One row per registered encoder: its facts, and whether its weights are in this machine's hub cache."""
    rows = []
    for spec in ENCODERS.values():
        snapshots = hub_cache_dir() / _repo_folder(spec.hub_id) / "snapshots"
        cached = any(next(snapshots.glob(f"*/{f}"), None) is not None for f in spec.weight_files)
        rows.append({"name": spec.name, "kind": "encoder", "hub_id": spec.hub_id, "domain": spec.domain,
                     "architecture": spec.architecture, "input_size": spec.input_size,
                     "embedding": spec.embedding_dim, "tokens": spec.tokens, "licence": spec.licence,
                     "gated": spec.gated, "non_commercial": spec.non_commercial, "weights_cached": bool(cached),
                     "card": spec.card_url})
    return rows


# --- the registry -----------------------------------------------------------------------------------------
# Facts from each encoder's own model card (card_url) and the pages in `sources`; what could not be confirmed
# here (no network) is said in `note`. docs/reference/encoders.md shows them as a table.

_MAHMOOD = ("Resize(224) + CenterCrop(224) (torchvision's default bilinear), ImageNet mean/std")

register_encoder(EncoderSpec(
    name="uni", hub_id="MahmoodLab/UNI", architecture="vit_large_patch16_224",
    kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
    input_size=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", embed_dim=1024,
    licence="CC-BY-NC-ND-4.0", gated=True, non_commercial=True, card_url="https://huggingface.co/MahmoodLab/UNI",
    resize=_MAHMOOD, weight_files=("pytorch_model.bin",),
    sources=("https://github.com/mahmoodlab/UNI/blob/main/uni/get_encoder/get_encoder.py",),
    description="UNI: ViT-L/16 pathology encoder (Mass-100K, DINOv2), Mahmood Lab"))

register_encoder(EncoderSpec(
    name="uni2-h", hub_id="MahmoodLab/UNI2-h", architecture="vit_giant_patch14_224",
    kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU",
            "reg_tokens": 8, "dynamic_img_size": True},
    input_size=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", embed_dim=1536,
    licence="CC-BY-NC-ND-4.0", gated=True, non_commercial=True, card_url="https://huggingface.co/MahmoodLab/UNI2-h",
    resize=_MAHMOOD, weight_files=("pytorch_model.bin",),
    sources=("https://github.com/mahmoodlab/UNI/blob/main/README.md",),
    description="UNI2-h: ViT-H/14 with 8 registers, SwiGLU (200M+ H&E and IHC tiles), Mahmood Lab"))

register_encoder(EncoderSpec(
    name="virchow", hub_id="paige-ai/Virchow", architecture="vit_huge_patch14_224",
    kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
            "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
    input_size=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls+mean",
    embed_dim=1280, licence="Apache-2.0 (with the access form's additional terms)", gated=True, non_commercial=False,
    card_url="https://huggingface.co/paige-ai/Virchow", resize="timm's resolve_data_config: Resize(224, bicubic)",
    weight_files=("model.safetensors", "pytorch_model.bin"),
    sources=("https://github.com/mahmoodlab/TRIDENT/blob/main/trident/patch_encoder_models/load.py",),
    note="Licence and gate read from the card; the card's usage code (constructor arguments, 257 tokens, class "
         "token + mean of patch tokens = 2560) could not be read here and was checked against TRIDENT's loader.",
    description="Virchow: ViT-H/14, SwiGLU (1.5M slides), Paige"))

register_encoder(EncoderSpec(
    name="virchow2", hub_id="paige-ai/Virchow2", architecture="vit_huge_patch14_224",
    kwargs={"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
            "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
    input_size=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls+mean",
    embed_dim=1280, licence="CC-BY-NC-ND-4.0", gated=True, non_commercial=True,
    card_url="https://huggingface.co/paige-ai/Virchow2", resize="timm's resolve_data_config: Resize(224, bicubic)",
    weight_files=("model.safetensors", "pytorch_model.bin"),
    sources=("https://github.com/mahmoodlab/TRIDENT/blob/main/trident/patch_encoder_models/load.py",
             "https://arxiv.org/abs/2408.00738"),
    note="Licence and gate read from the card; the usage code (tokens 1-4 are registers: output[:, 5:] is "
         "averaged, 2560-d) could not be read here and was checked against TRIDENT's loader.",
    description="Virchow2: ViT-H/14 with 4 registers, SwiGLU (3.1M slides, mixed magnification), Paige"))

register_encoder(EncoderSpec(
    name="h-optimus-0", hub_id="bioptimus/H-optimus-0", architecture="vit_giant_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False, "global_pool": "token"},
    input_size=224, interpolation="bicubic", mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
    pooling="cls", embed_dim=1536, licence="Apache-2.0", gated=None, non_commercial=False,
    card_url="https://huggingface.co/bioptimus/H-optimus-0",
    resize="none on the card (expects 224 x 224 tiles at 0.5 um/px); oncolens resizes other sizes bicubically",
    weight_files=("pytorch_model.bin", "model.safetensors"),
    sources=("https://huggingface.co/bioptimus/H-optimus-0/blob/main/config.json",
             "https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0"),
    note="config.json: vit_giant_patch14_reg4_dinov2 (g/14, 40 blocks, 24 heads, 1536-d, 4 registers, SwiGLU), "
         "global_pool token. Whether the hub repository is gated could not be confirmed here; config.json names no "
         "interpolation (timm's default, bicubic, is used).",
    description="H-optimus-0: ViT-g/14 with 4 registers (500k+ H&E slides), Bioptimus"))

register_encoder(EncoderSpec(
    name="prov-gigapath", hub_id="prov-gigapath/prov-gigapath", architecture="vit_giant_patch14_dinov2",
    kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "mlp_ratio": 5.33334},
    input_size=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", embed_dim=1536,
    licence="research use only (any deployed use, commercial or otherwise, is out of scope)", gated=True,
    non_commercial=True, card_url="https://huggingface.co/prov-gigapath/prov-gigapath",
    resize="Resize(256, bicubic) + CenterCrop(224), ImageNet mean/std (oncolens resizes the whole image to 224)",
    weight_files=("pytorch_model.bin",),
    sources=("https://github.com/prov-gigapath/prov-gigapath/blob/main/README.md",
             "https://github.com/mahmoodlab/TRIDENT/blob/main/trident/patch_encoder_models/load.py"),
    note="The tile encoder's transform, gate and use terms are the README's; its config.json (architecture "
         "vit_giant_patch14_dinov2 with patch 16, 1536-d, 40 blocks, 24 heads, SwiGLU) could not be read here and "
         "was checked against TRIDENT's loader; the hub licence tag was not confirmed.",
    description="Prov-GigaPath tile encoder: ViT-g/16, SwiGLU (1.3B tiles, 171k slides), Providence/Microsoft"))

register_encoder(EncoderSpec(
    name="phikon-v2", hub_id="owkin/phikon-v2", architecture="vit_large_patch16_224",
    kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5},
    input_size=224, interpolation="bilinear", mean=None, std=None, pooling="cls", embed_dim=1024,
    licence="Owkin non-commercial licence", gated=None, non_commercial=True,
    card_url="https://huggingface.co/owkin/phikon-v2", resize="the repository's image processor",
    weight_files=("model.safetensors",), checkpoint_format="hf-dinov2", preprocessor_file="preprocessor_config.json",
    sources=("https://arxiv.org/abs/2409.09173",),
    note="Card: ViT-L/16 via DINOv2, transformers Dinov2Model, features = last_hidden_state[:, 0]. Its weights are "
         "converted from transformers' names to timm's; mean, std and interpolation are read from the repository's "
         "preprocessor_config.json, which could not be read here. Gate not confirmed.",
    description="Phikon-v2: ViT-L/16 DINOv2 on 460M public pathology tiles, Owkin"))

for _size, _width, _heads in (("s", 384, 6), ("b", 768, 12), ("l", 1024, 16)):
    _arch = {"s": "vit_small_patch14_dinov2", "b": "vit_base_patch14_dinov2", "l": "vit_large_patch14_dinov2"}[_size]
    register_encoder(EncoderSpec(
        name=f"dinov2-{_size}", hub_id=f"timm/{_arch}.lvd142m", architecture=_arch,
        kwargs={"img_size": 518, "patch_size": 14, "init_values": 1e-5},
        input_size=518, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", embed_dim=_width,
        licence="Apache-2.0", gated=False, non_commercial=False, domain="general",
        card_url=f"https://huggingface.co/timm/{_arch}.lvd142m",
        resize="518 x 518, bicubic, crop_pct 1.0 (timm's pretrained configuration)",
        sources=(f"https://huggingface.co/facebook/dinov2-{ {'s': 'small', 'b': 'base', 'l': 'large'}[_size] }",
                 "https://github.com/facebookresearch/dinov2"),
        note="Facts from timm's pretrained configuration of the timm-format copy (the facebook/dinov2-* "
             "repositories hold transformers weights). 518 px is slow on a CPU: --image-size 224 resamples the "
             "position embeddings.",
        description=f"DINOv2 ViT-{_size.upper()}/14 (LVD-142M, general images), Meta"))

register_encoder(EncoderSpec(
    name="rad-dino", hub_id="microsoft/rad-dino", architecture="vit_base_patch14_dinov2",
    kwargs={"img_size": 518, "patch_size": 14, "init_values": 1e-5},
    input_size=518, interpolation="bicubic", mean=None, std=None, pooling="cls", embed_dim=768,
    licence="MIT (research use only; not for clinical practice)", gated=False, non_commercial=False,
    domain="radiology", card_url="https://huggingface.co/microsoft/rad-dino",
    resize="the repository's image processor (518 px: 37 x 37 patch tokens)",
    weight_files=("backbone_compatible.safetensors",), checkpoint_format="dinov2",
    preprocessor_file="preprocessor_config.json",
    note="Card: ViT-B/14 fine-tuned from dinov2-base on chest X-rays, CLS 768-d, patch grid 37 x 37 (518 px). "
         "backbone_compatible.safetensors is in the original DINOv2 code's layout. Mean, std and interpolation are "
         "read from preprocessor_config.json, which could not be read here. The licence was MSRLA before it became "
         "MIT.",
    description="RAD-DINO: ViT-B/14 chest X-ray encoder (DINOv2), Microsoft"))

register_encoder(EncoderSpec(
    name="biomedclip", hub_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    architecture="vit_base_patch16_224", kwargs={"img_size": 224},
    input_size=224, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD, pooling="cls", embed_dim=768,
    licence="MIT", gated=False, non_commercial=False, domain="biomedical",
    card_url="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    resize="open_clip's eval transform: Resize(224, bicubic) + CenterCrop(224), OpenAI CLIP mean/std",
    weight_files=("open_clip_pytorch_model.bin",), checkpoint_format="open_clip",
    sources=("https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/blob/main/"
             "open_clip_config.json",),
    note="open_clip_config.json: timm vit_base_patch16_224 trunk, timm_pool '' (the trunk's class token), linear "
         "projection to 512. The embedding here is the trunk's 768-d class token, before the contrastive "
         "projection; the text tower is not loaded.",
    description="BiomedCLIP image tower: ViT-B/16 (PMC-15M figure-caption pairs), Microsoft"))
