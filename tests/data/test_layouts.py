import pytest

from oncolens.data import LayoutOptions, scan
from oncolens.data.layouts import detect_layout, get_layout, list_layouts, parse_breakhis_name
from tests.helpers import dicom_file, noise_image, save


def test_registry_lists_builtin_layouts():
    assert {"folder", "breakhis", "idc", "csv", "phantoms"} <= set(list_layouts())
    with pytest.raises(ValueError, match="unknown layout"):
        get_layout("nope")


def test_folder_nested_levels_and_exclude(tmp_path):
    root = tmp_path / "Multi Cancer"
    for cancer, sub in [("Brain Cancer", "brain_glioma"), ("Brain Cancer", "brain_tumor"), ("Oral Cancer", "oral_scc")]:
        for i in range(2):
            save(noise_image(32, seed=i), root / cancer / sub / f"{sub}_{i}.jpg")
    save(noise_image(32), root / "ALL" / "all_benign" / "x.jpg")
    result = scan(root, options=LayoutOptions(exclude=("ALL",)))
    frame = result.manifest
    assert result.summary.layout == "folder"
    assert len(frame) == 6
    assert set(frame["cancer_type"]) == {"Brain Cancer", "Oral Cancer"}
    assert set(frame["subclass"]) == {"brain_glioma", "brain_tumor", "oral_scc"}
    assert (frame["label"] == frame["subclass"]).all()
    assert not frame["path"].str.contains("/ALL/").any()


def test_folder_split_folders_are_not_labels(tmp_path):
    for split in ("Training", "Testing"):
        for cls in ("glioma", "notumor"):
            save(noise_image(32, "L"), tmp_path / split / cls / f"{split}_{cls}.jpg")
    frame = scan(tmp_path).manifest
    assert set(frame["label"]) == {"glioma", "notumor"}
    assert set(frame["source_split"]) == {"training", "testing"}
    assert "cancer_type" not in frame.columns


def test_folder_group_regex(tmp_path):
    for name in ("sj-03-852-R2_001.jpg", "sj-03-852_002.jpg", "sj-05-1467_001.jpg"):
        save(noise_image(32), tmp_path / "cll" / name)
    save(noise_image(32), tmp_path / "fl" / "sj-05-9_001.jpg")
    frame = scan(tmp_path, options=LayoutOptions(group_regex=r"(sj-\d+-\d+)")).manifest
    assert set(frame["group"]) == {"sj-03-852", "sj-05-1467", "sj-05-9"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SOB_B_A-14-22549AB-40-001.png", ("benign", "adenosis", "14-22549", "14-22549AB", "40X")),
        ("SOB_M_DC-14-13412-100-003.png", ("malignant", "ductal_carcinoma", "14-13412", "14-13412", "100X")),
        ("SOB_B_PT-14-21998AB-400-011.png", ("benign", "phyllodes_tumor", "14-21998", "14-21998AB", "400X")),
        ("SOB_M_PC-14-15687B-100-006.png", ("malignant", "papillary_carcinoma", "14-15687", "14-15687B", "100X")),
    ],
)
def test_breakhis_filename_parser(name, expected):
    fields = parse_breakhis_name(name)
    assert (fields["label"], fields["subtype"], fields["patient"], fields["slide"], fields["magnification"]) == expected


def test_breakhis_parser_rejects_other_names():
    assert parse_breakhis_name("image_001.png") is None
    assert parse_breakhis_name("SOB_X_A-14-22549AB-40-001.png") is None
    assert parse_breakhis_name("SOB_B_ZZ-14-22549AB-40-001.png") is None


def test_breakhis_layout_detected_and_scanned(tmp_path):
    names = ["SOB_B_A-14-22549AB-40-001.png", "SOB_B_A-14-22549CD-40-002.png", "SOB_M_LC-14-12204-40-001.png"]
    for name in names:
        save(noise_image(32), tmp_path / ("benign" if "_B_" in name else "malignant") / name)
    save(noise_image(32), tmp_path / "benign" / "stray.png")
    result = scan(tmp_path)
    assert result.summary.layout == "breakhis"
    frame = result.manifest
    assert len(frame) == 3
    assert frame.set_index("slide").loc["14-22549CD", "group"] == "14-22549"
    assert set(frame["magnification"]) == {"40X"}
    assert [s.path.endswith("stray.png") for s in result.skipped] == [True]
    assert "BreaKHis pattern" in result.skipped[0].reason


def test_idc_layout(tmp_path):
    for patient in ("10253", "10254"):
        for cls in ("0", "1"):
            save(noise_image(32), tmp_path / patient / cls / f"{patient}_idx5_x51_y101_class{cls}.png")
    save(noise_image(32), tmp_path / "10253" / "0" / "10253_idx5_x1_y1_class1.png")  # contradicts its folder
    result = scan(tmp_path)
    assert result.summary.layout == "idc"
    frame = result.manifest
    assert len(frame) == 4
    assert set(frame["label"]) == {"idc_negative", "idc_positive"}
    assert set(frame["group"]) == {"10253", "10254"}
    assert "contradicts" in result.skipped[0].reason


def test_csv_layout_with_group_and_extra_columns(tmp_path):
    save(noise_image(32), tmp_path / "imgs" / "a.png")
    save(noise_image(32, seed=1), tmp_path / "imgs" / "b.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,diagnosis,pid,site\nimgs/a.png,tumor,P1,lung\nimgs/b.png,normal,P2,lung\nimgs/missing.png,tumor,P3,lung\n")
    options = LayoutOptions(path_col="file", label_col="diagnosis", group_col="pid")
    result = scan(csv, options=options)
    assert result.summary.layout == "csv"
    frame = result.manifest
    assert list(frame["label"]) == ["tumor", "normal"]
    assert list(frame["group"]) == ["P1", "P2"]
    assert list(frame["site"]) == ["lung", "lung"]
    assert result.skipped[0].reason == "file not found"


def test_csv_layout_missing_column_is_clear(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,diagnosis\n")
    with pytest.raises(ValueError, match="not found"):
        scan(csv, options=LayoutOptions(path_col="path"))


def test_dicom_in_folder_layout_gives_patient_group(tmp_path):
    dicom_file(tmp_path / "tumor" / "a.dcm", patient_id="P1")
    dicom_file(tmp_path / "normal" / "b.dcm", patient_id="P2", seed=1)
    frame = scan(tmp_path).manifest
    assert set(frame["group"]) == {"P1", "P2"}
    assert set(frame["format"]) == {"DICOM"}


def test_auto_detect_prefers_specific_layouts(tmp_path, phantom_dir):
    assert detect_layout(phantom_dir).name == "phantoms"
    save(noise_image(32), tmp_path / "a" / "x.png")
    assert detect_layout(tmp_path).name == "folder"


def test_layouts_known_by_file_names_share_one_detect(tmp_path):
    """BreaKHis and IDC are told by their file names through one function: 0.9 x the share of sampled images
    whose names fit, when over half do; nothing for a folder without images or a file."""
    from oncolens.data.layouts.base import fit_by_names

    breakhis, idc = get_layout("breakhis"), get_layout("idc")
    names = ["SOB_B_A-14-22549AB-40-001.png", "SOB_B_A-14-22549CD-40-002.png", "SOB_M_LC-14-12204-40-001.png"]
    for name in names:
        save(noise_image(32), tmp_path / "bh" / name)
    save(noise_image(32), tmp_path / "bh" / "stray.png")
    assert breakhis.detect(tmp_path / "bh") == pytest.approx(0.9 * 3 / 4)
    assert idc.detect(tmp_path / "bh") == 0.0
    for i in range(2):
        save(noise_image(32), tmp_path / "idc" / "10253" / "1" / f"10253_idx5_x{i}_y1_class1.png")
    save(noise_image(32), tmp_path / "idc" / "10253" / "2" / "10253_idx5_x9_y1_class1.png")  # no such class folder
    assert idc.detect(tmp_path / "idc") == pytest.approx(0.9 * 2 / 3)
    save(noise_image(32), tmp_path / "idc" / "x.png")
    save(noise_image(32), tmp_path / "idc" / "y.png")
    assert idc.detect(tmp_path / "idc") == 0.0  # 2 of 5: not over half
    (tmp_path / "empty").mkdir()
    assert fit_by_names(tmp_path / "empty", lambda p: True) == 0.0
    assert fit_by_names(tmp_path / "bh" / "stray.png", lambda p: True) == 0.0
