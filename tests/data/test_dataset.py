import torch
from torch.utils.data import DataLoader

from oncolens.data import Augmentation, ManifestDataset, Preprocessing, build_transforms, collate_skip_none, split


def test_dataset_rgb_and_greyscale(phantom_manifest):
    for channels in (1, 3):
        pre = Preprocessing(size=32, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
        ds = ManifestDataset(phantom_manifest, transform=build_transforms(pre))
        x, y = ds[0]
        assert x.shape == (channels, 32, 32) and x.dtype == torch.float32
        assert 0 <= y < len(ds.classes) == 4


def test_normalisation_applied():
    from PIL import Image

    pre = Preprocessing(size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = build_transforms(pre)(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.allclose(x, torch.ones_like(x))


def test_augmentation_only_for_training(phantom_manifest):
    pre = Preprocessing(size=32)
    ds_eval = ManifestDataset(phantom_manifest, transform=build_transforms(pre, train=False))
    assert torch.equal(ds_eval[0][0], ds_eval[0][0])
    aug = Augmentation(hflip=True, vflip=True, rotation=30, zoom=0.2, contrast=0.5)
    ds_train = ManifestDataset(phantom_manifest, transform=build_transforms(pre, train=True, augment=aug))
    torch.manual_seed(0)
    views = [ds_train[0][0] for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    names = [type(t).__name__ for t in build_transforms(pre, train=True, augment=aug).transforms]
    assert {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomAffine", "ColorJitter"} <= set(names)
    assert "RandomAffine" not in [type(t).__name__ for t in build_transforms(pre, train=True, augment=Augmentation.none()).transforms]


def test_split_selection_and_class_order(phantom_manifest):
    frame = split(phantom_manifest, test=0.25, seed=0)
    train = ManifestDataset(frame, split="train")
    test = ManifestDataset(frame, split="test", classes=train.classes)
    assert len(train) + len(test) == len(frame)
    assert train.classes == sorted(frame["label"].unique())


def test_unreadable_file_is_skipped_not_fatal(phantom_manifest, tmp_path):
    frame = phantom_manifest.head(4).copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    frame.loc[frame.index[1], "path"] = str(broken)
    ds = ManifestDataset(frame, transform=build_transforms(Preprocessing(size=32)))
    x, y = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_skip_none)))
    assert x.shape[0] == 3
    assert str(broken) in ds.bad_files
