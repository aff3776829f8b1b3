import pytest
from PIL import Image

from oncolens.data.imageio import UnreadableImage, decode_image, read_image
from tests.helpers import bomb_png, dicom_file, make_bad_corpus


def test_bad_corpus_each_file_converted_or_reported(tmp_path):
    expected = make_bad_corpus(tmp_path)
    for name, (outcome, detail) in expected.items():
        path = tmp_path / "cls_a" / name
        if outcome == "ok":
            loaded = read_image(path)
            assert loaded.image.mode == detail, name
            assert loaded.width > 0 and loaded.height > 0
        else:
            with pytest.raises(UnreadableImage) as info:
                read_image(path)
            assert detail in info.value.reason, (name, info.value.reason)
            assert str(path) in str(info.value)


def test_sixteen_bit_uses_full_range(tmp_path):
    make_bad_corpus(tmp_path)
    image = read_image(tmp_path / "cls_a" / "grey16.png").image
    lo, hi = image.getextrema()
    assert lo == 0 and hi == 255


def test_rgba_transparent_becomes_black():
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    import io

    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    image = decode_image(buffer.getvalue()).image
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (0, 0, 0)


def test_bomb_rejected_before_decoding():
    with pytest.raises(UnreadableImage, match="too large"):
        decode_image(bomb_png(), max_pixels=10_000_000)


def test_max_pixels_is_configurable(tmp_path):
    img = Image.new("L", (100, 100))
    img.save(tmp_path / "x.png")
    with pytest.raises(UnreadableImage, match="too large"):
        read_image(tmp_path / "x.png", max_pixels=5_000)


def test_dicom_read_with_patient_and_window(tmp_path):
    loaded = read_image(dicom_file(tmp_path / "a.dcm", patient_id="P42"))
    assert loaded.format == "DICOM" and loaded.image.mode == "L"
    assert loaded.meta["patient_id"] == "P42"
    assert loaded.image.getextrema() == (0, 255)


def test_dicom_detected_by_content_not_extension(tmp_path):
    path = dicom_file(tmp_path / "a.dcm")
    renamed = path.rename(tmp_path / "scan.png")
    assert read_image(renamed).format == "DICOM"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UnreadableImage, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(UnreadableImage, match="directory"):
        read_image(tmp_path)


def test_dicom_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    import time

    from oncolens.data import UnreadableImage, read_image
    from tests.helpers import dicom_file

    bomb = dicom_file(tmp_path / "bomb.dcm", claimed=(20, 6000, 6000))  # 720 M values claimed, a few KB on disk
    assert bomb.stat().st_size < 10_000
    started = time.perf_counter()
    with pytest.raises(UnreadableImage, match=r"too large \(20 frame\(s\) of 6000x6000x1"):
        read_image(bomb)
    assert time.perf_counter() - started < 1.0
    # below the per-frame limit but above it in total: still refused
    with pytest.raises(UnreadableImage, match="too large"):
        read_image(dicom_file(tmp_path / "many.dcm", size=64, frames=40), max_pixels=64 * 64 * 20)


def test_multi_frame_dicom_decodes_its_middle_frame_only(tmp_path):
    import numpy as np

    from oncolens.data import read_image
    from tests.helpers import dicom_file

    loaded = read_image(dicom_file(tmp_path / "series.dcm", size=16, frames=5))
    assert loaded.image.size == (16, 16) and np.asarray(loaded.image).std() == 0  # one constant frame


def test_a_deflated_dicom_decodes(tmp_path):
    from tests.helpers import deflated_dicom

    loaded = read_image(deflated_dicom(tmp_path / "d.dcm", rows=40, cols=24))
    assert loaded.image.size == (24, 40) and loaded.meta["patient_id"] == "PAT-D" and loaded.format == "DICOM"


@pytest.mark.parametrize("kind", ["claims too much", "lies about its size"])
def test_a_deflated_dicom_bomb_is_refused_without_inflating_it(tmp_path, kind):
    from tests.helpers import deflated_dicom, peak_rss_mb

    if kind == "claims too much":  # 20 frames of 6000 x 6000: 1.44 GB of pixels in ~1.4 MB
        path = deflated_dicom(tmp_path / "bomb.dcm", rows=6000, cols=6000, frames=20)
        reason = "too large"
    else:  # the header claims 64 x 64, the stream holds 1 GB
        path = deflated_dicom(tmp_path / "liar.dcm", rows=64, cols=64, pixel_bytes=1 << 30)
        reason = "inflates beyond"
    assert path.stat().st_size < 3_000_000
    with pytest.raises(UnreadableImage, match=reason):
        read_image(path)
    small = deflated_dicom(tmp_path / "small.dcm")
    probe = ("from oncolens.data.imageio import read_image, UnreadableImage\n"
             "try:\n    read_image({!r})\nexcept UnreadableImage:\n    pass\n")
    extra = peak_rss_mb(probe.format(str(path))) - peak_rss_mb(probe.format(str(small)))
    assert extra < 100, f"{extra:.0f} MB more than a small file"
