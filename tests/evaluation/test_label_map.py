import numpy as np
import pytest

from oncolens.evaluation import load_label_map


def test_map_labels_and_sum_model_probabilities(tmp_path):
    file = tmp_path / "map.yaml"
    file.write_text("normal: [benign, normal, no_tumor]\ntumor: [malignant, '*_carcinoma', glioma]\n")
    lm = load_label_map(file)
    model_classes = ["benign", "ductal_carcinoma", "lobular_carcinoma", "weird"]
    proba = np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.3, 0.5, 0.1]])
    mapped = lm.apply(["no_tumor", "glioma"], model_classes, proba)
    assert mapped.classes == ["normal", "tumor"]
    assert mapped.y.tolist() == [0, 1]
    assert np.allclose(mapped.proba, [[0.5 / 0.9, 0.4 / 0.9], [0.1 / 0.9, 0.8 / 0.9]])
    assert mapped.unmapped_model_classes == ["weird"]
    assert any("weird" in n for n in mapped.notes())


def test_unmapped_data_labels_are_reported():
    lm = load_label_map({"normal": ["normal"], "tumor": ["tumor"]})
    mapped = lm.apply(["normal", "cyst", "tumor", "cyst"], ["normal", "tumor"], np.full((4, 2), 0.5))
    assert mapped.kept.tolist() == [True, False, True, False]
    assert mapped.unmapped_labels == {"cyst": 2}
    assert "cyst (2 images)" in mapped.notes()[0]


def test_builtin_normal_vs_tumor():
    lm = load_label_map("normal-vs-tumor")
    for label in ("benign", "notumor", "lung_n", "histo_normal", "normal"):
        assert lm.target_of(label) == "normal", label
    for label in ("malignant", "glioma", "lung_aca", "mri_tumor", "oscc"):
        assert lm.target_of(label) == "tumor", label


def test_invalid_maps():
    with pytest.raises(ValueError, match="two target"):
        load_label_map({"only": ["x"]})
    with pytest.raises(FileNotFoundError):
        load_label_map("/nope.yaml")
