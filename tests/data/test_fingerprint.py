import shutil

import pandas as pd
import pytest

from oncolens.data import generate_phantoms, scan
from oncolens.data.fingerprint import fingerprint, modality_from_words
from tests.helpers import dicom_file


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Phantoms of each family, once under their own names and once copied to neutral folder names."""
    root = generate_phantoms(tmp_path_factory.mktemp("fp"), n=32, size=40, seed=3, per_patient=2)
    manifest = scan(root).manifest
    out = {}
    for family in ("histo", "mri"):
        part = manifest[manifest["label"].str.startswith(family)].reset_index(drop=True)
        neutral = part.copy()
        for i, row in neutral.iterrows():
            target = root.parent / ("set_x" if family == "histo" else "set_y") / ("a" if row["label"].endswith("normal") else "b") / f"{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(row["path"], target)
            neutral.loc[i, "path"] = str(target)
        out[family], out[f"neutral_{family}"] = part, neutral
    return out


def test_colour_histology_and_greyscale_mri_are_told_apart(families):
    histo, mri = fingerprint(families["histo"]), fingerprint(families["mri"])
    assert (histo.modality, histo.greyscale, histo.greyscale_fraction) == ("histology", False, 0.0)
    assert (mri.modality, mri.greyscale, mri.greyscale_fraction) == ("mri", True, 1.0)
    assert histo.median_side == mri.median_side == 40
    assert histo.class_counts == {"histo_normal": 8, "histo_tumor": 8} and histo.imbalance == 1.0


def test_without_names_colour_still_decides(families):
    histo, mri = fingerprint(families["neutral_histo"]), fingerprint(families["neutral_mri"])
    assert histo.modality == mri.modality == "unknown"
    assert not histo.greyscale and mri.greyscale
    assert "no modality word" in histo.modality_evidence


def test_a_mixture_of_modalities_is_unknown(families):
    mixed = fingerprint(pd.concat([families["histo"], families["mri"]], ignore_index=True))
    assert mixed.modality == "unknown" and "several modalities" in mixed.modality_evidence


def test_dicom_modality_tag_wins_over_words(tmp_path):
    rows = [{"path": str(dicom_file(tmp_path / "mri_named" / f"{i}.dcm", modality="CT", seed=i, patient_id=f"P{i}")),
             "label": "a" if i % 2 else "b", "group": f"P{i}"} for i in range(6)]
    fp = fingerprint(pd.DataFrame(rows))
    assert fp.modality == "ct" and "DICOM Modality CT" in fp.modality_evidence
    assert fp.n_patients == 6 and fp.greyscale


def test_words_are_whole_tokens():
    votes = modality_from_words(["/data/brain_tumor_mri/x.jpg", "/data/busi_256/y.png", "/data/ctx/scan.png",
                                 "/data/lc25000_224/lung_aca/1.jpg"])
    assert votes == {"mri": 1, "ultrasound": 1, "histology": 1}  # "ctx" is not "ct"


def test_unreadable_sampled_files_are_counted_not_fatal(families, tmp_path):
    part = families["histo"].copy()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    part.loc[0, "path"] = str(bad)
    fp = fingerprint(part, sample=64)
    assert fp.unreadable_in_sample == 1 and fp.sampled == len(part) - 1
