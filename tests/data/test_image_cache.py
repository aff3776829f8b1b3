"""The decoded-image cache: the same tensors as decoding, decoded once, shared across epochs and runs."""

import numpy as np
import torch

from oncolens.data import Augmentation, ManifestDataset, build_transforms
from oncolens.data.image_cache import DecodedImageCache
from oncolens.data.transforms import Preprocessing


def test_cached_images_give_exactly_the_decoded_tensors(phantom_manifest, tmp_path):
    pre = Preprocessing(size=40)
    plain = ManifestDataset(phantom_manifest, transform=build_transforms(pre, False), min_size=40)
    cached = ManifestDataset(phantom_manifest, transform=build_transforms(pre, False, resized=True), min_size=40,
                             image_cache=DecodedImageCache(tmp_path, phantom_manifest["path"].tolist(), pre))
    for epoch in range(2):
        for i in range(len(plain)):
            assert torch.equal(plain[i][0], cached[i][0])
    assert cached.image_cache.misses == len(plain) and cached.image_cache.hits == len(plain)
    assert cached.image_cache.complete
    again = DecodedImageCache(tmp_path, phantom_manifest["path"].tolist(), pre)  # another run, same files
    assert again.complete and again.folder == cached.image_cache.folder


def test_augmentation_still_draws_on_cached_images(phantom_manifest, tmp_path):
    pre = Preprocessing(size=40)
    augment = Augmentation(hflip=True, vflip=True, rotation=20, zoom=0.1)
    cache = DecodedImageCache(tmp_path, phantom_manifest["path"].tolist(), pre)
    dataset = ManifestDataset(phantom_manifest, transform=build_transforms(pre, True, augment, resized=True),
                              image_cache=cache)
    torch.manual_seed(0)
    views = [dataset[0][0] for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_other_sizes_or_files_use_another_cache(phantom_manifest, tmp_path):
    paths = phantom_manifest["path"].tolist()
    folders = {DecodedImageCache(tmp_path, paths, Preprocessing(size=40)).folder,
               DecodedImageCache(tmp_path, paths, Preprocessing(size=48)).folder,
               DecodedImageCache(tmp_path, paths[:5], Preprocessing(size=40)).folder}
    assert len(folders) == 3
    assert np.asarray(DecodedImageCache(tmp_path, paths[:5], Preprocessing(size=40)).filled).sum() == 0


def test_a_training_run_with_the_cache_learns_exactly_as_without(phantom_manifest, tmp_path):
    from oncolens.data import save_manifest, split
    from oncolens.training import TrainConfig, train

    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp_path / "s.csv")
    runs = [train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=2, batch_size=8,
                              runs_dir=str(tmp_path / "runs"), name=f"r{cached}", recipe="off", calibrate=False,
                              tracking="none", image_cache=cached, cache_dir=str(tmp_path / "cache")))
            for cached in (False, True)]
    assert runs[0].history["train_loss"].tolist() == runs[1].history["train_loss"].tolist()
    assert runs[0].history["val_loss"].tolist() == runs[1].history["val_loss"].tolist()
    assert list((tmp_path / "cache" / "images").iterdir())  # the cache was used
