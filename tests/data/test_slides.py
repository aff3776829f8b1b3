"""Whole-slide reading on generated pyramidal TIFFs: pyramid and resolution, tissue, the tile grid."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide")

from oncolens.data.phantoms import generate_slide  # noqa: E402
from tests.helpers import dicom_file  # noqa: E402
from oncolens.data.slides import open_slide, slide_info, tile_grid, tissue_mask  # noqa: E402
from oncolens.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return generate_slide(tmp_path_factory.mktemp("slide") / "s.tif", size=1024, levels=3, tile=128, seed=1)


def test_the_generated_slide_reads_as_a_pyramid_with_its_resolution(slide_path):
    info = slide_info(open_slide(slide_path), slide_path)
    assert info.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert info.level_downsamples == (1.0, 2.0, 4.0) and info.mpp == pytest.approx(0.5)


def test_tissue_is_found_where_it_was_drawn(slide_path):
    mask, downsample = tissue_mask(open_slide(slide_path))
    size = int(round(mask.shape[0] * downsample))
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]] * downsample / size
    truth = ((yy - 0.5) / 0.36) ** 2 + ((xx - 0.5) / 0.42) ** 2 < 1.0  # the ellipse generate_slide paints
    assert (mask == truth).mean() > 0.97
    assert mask.mean() == pytest.approx(np.pi * 0.36 * 0.42, abs=0.03)


def test_a_blank_slide_has_no_tissue_and_no_tiles(tmp_path):
    import tifffile

    path = tmp_path / "blank.tif"
    with tifffile.TiffWriter(path) as writer:
        for side in (512, 256):
            writer.write(np.full((side, side, 3), 240, np.uint8), tile=(128, 128), photometric="rgb",
                         resolution=(2e4, 2e4), resolutionunit="CENTIMETER", subfiletype=0 if side == 512 else 1)
    slide = open_slide(path)
    assert not tissue_mask(slide)[0].any()
    assert tile_grid(slide, path, size=64, mpp=0.5) == []


def test_the_grid_is_laid_at_the_target_resolution_on_the_right_level(slide_path):
    slide = open_slide(slide_path)
    fine = tile_grid(slide, slide_path, size=128, mpp=0.5, min_tissue=0.5)
    coarse = tile_grid(slide, slide_path, size=64, mpp=1.0, min_tissue=0.5)
    assert fine and all(t.level == 0 and t.read_size == 128 for t in fine)
    assert coarse and all(t.level == 1 and t.read_size == 64 for t in coarse)  # 2x coarser: read from level 1
    assert {(t.x, t.y) for t in fine} == {(t.x, t.y) for t in coarse}  # the same 64 um squares
    assert all(t.tissue >= 0.5 for t in fine)
    image = fine[0].load()
    assert image.size == (128, 128) and image.mode == "RGB"
    assert len(tile_grid(slide, slide_path, size=128, mpp=0.5, min_tissue=0.0)) == 64  # the whole 8 x 8 grid


def test_a_slide_without_a_resolution_needs_one(tmp_path):
    path = generate_slide(tmp_path / "nompp.tif", size=512, levels=2, tile=128, mpp=None)
    slide = open_slide(path)
    with pytest.raises(DataError, match="does not say its resolution"):
        tile_grid(slide, path, size=64, mpp=0.5)
    assert tile_grid(slide, path, size=64, mpp=0.5, slide_mpp=0.25)  # the scanner's value, given
    assert tile_grid(slide, path, size=64, mpp=None)  # level 0 as it is


def test_files_that_are_not_slides_are_clear_errors(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"not a slide")
    with pytest.raises(DataError, match="cannot read"):
        open_slide(tmp_path / "x.svs")
    with pytest.raises(DataError, match="not found"):
        open_slide(tmp_path / "missing.svs")


def test_tiles_for_training_are_labelled_by_region_and_grouped_by_slide(slide_path, tmp_path):
    import json

    from typer.testing import CliRunner

    from oncolens.apps.cli import app
    from oncolens.data import load_manifest

    geojson = tmp_path / "s.geojson"  # QuPath's export: the tumour zone generate_slide paints (upper left)
    square = [[200, 200], [560, 200], [560, 560], [200, 560], [200, 200]]
    rest = [[0, 0], [1024, 0], [1024, 1024], [0, 1024], [0, 0]]
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "tumour"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [rest]},
         "properties": {"label": "normal"}}]}))
    result = CliRunner().invoke(app, ["tile", str(slide_path), "--out", str(tmp_path / "tiles"), "--size", "64",
                                      "--mpp", "1.0", "--annotations", str(geojson)])
    assert result.exit_code == 0, result.output
    frame = load_manifest(tmp_path / "tiles" / "manifest.csv")
    assert set(frame["label"]) == {"tumour", "normal"} and set(frame["group"]) == {"s"}
    tumour = frame[frame["label"] == "tumour"]
    centres = (tumour["x"].astype(int) + 64, tumour["y"].astype(int) + 64)  # 64 px at 1 um/px = 128 level-0 px
    assert ((centres[0] >= 200) & (centres[0] <= 560) & (centres[1] >= 200) & (centres[1] <= 560)).all()
    assert all(Path(p).exists() for p in frame["path"])


def test_slide_labels_label_every_tile_and_group_by_patient(slide_path, tmp_path):
    from oncolens.data.slides import write_tiles

    frame = write_tiles([slide_path], tmp_path, size=64, mpp=2.0,
                        slide_labels={"s": {"label": "tumour", "patient": "P7"}})
    assert len(frame) and set(frame["label"]) == {"tumour"} and set(frame["group"]) == {"P7"}


def _blank_single_level_tiff(path: Path, side: int, mpp: float = 0.5) -> Path:
    """A single-level tiled TIFF of ``side`` x ``side`` white pixels: kilobytes on disk, gigabytes decoded."""
    import tifffile

    tile = np.full((256, 256, 3), 255, np.uint8)
    count = (-(-side // 256)) ** 2
    tifffile.imwrite(path, (tile for _ in range(count)), shape=(side, side, 3), dtype=np.uint8, tile=(256, 256),
                     compression="zlib", photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER")
    return path


def test_a_huge_single_level_slide_costs_a_thumbnail_not_its_pixels(tmp_path):
    from tests.helpers import peak_rss_mb

    path = _blank_single_level_tiff(tmp_path / "big.tif", 12_000)  # read whole: 576 MB of RGBA
    assert path.stat().st_size < 5_000_000
    probe = ("from oncolens.data.slides import open_slide, tissue_mask\n"
             f"mask, down = tissue_mask(open_slide({str(path)!r}))\n"
             "assert mask.shape[1] <= 2048 and not mask.any(), mask.shape\n")
    small = _blank_single_level_tiff(tmp_path / "small.tif", 2048)  # the same 2,048 px thumbnail, read whole
    extra = peak_rss_mb(probe) - peak_rss_mb(probe.replace(str(path), str(small)))
    assert extra < 150, f"{extra:.0f} MB more than a 2,048 px slide"


def test_a_slide_claiming_impossible_dimensions_is_refused(tmp_path):
    import tifffile

    from oncolens.data.slides import MAX_SLIDE_SIDE, check_slide_size

    class Claimed:  # what OpenSlide would report for a crafted header
        dimensions = (500_000, 500_000)

    with pytest.raises(DataError, match=f"{MAX_SLIDE_SIDE:,}"):
        check_slide_size(Claimed(), "crafted.tif")
    path = _blank_single_level_tiff(tmp_path / "s.tif", 512)
    with tifffile.TiffFile(path, mode="r+b") as tif:  # the header now claims 500,000 x 500,000
        tif.pages[0].tags["ImageWidth"].overwrite(500_000)
        tif.pages[0].tags["ImageLength"].overwrite(500_000)
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    result = CliRunner().invoke(app, ["tile", str(path), "--out", str(tmp_path / "t"), "--mpp", "0"])
    assert result.exit_code == 2 and "error" in result.output, result.output


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_an_aperio_svs_is_read_with_its_vendor_levels_and_mpp(tmp_path, compression):
    """An SVS as Aperio scanners write it (tifffile: Aperio's ImageDescription on each level, a stripped
    thumbnail, no TIFF resolution tags): OpenSlide recognises the vendor from the text, the MPP is read
    from it, the thumbnail is an associated image (not a level), and the tiler works at the target mpp."""


    if compression == "jpeg":  # what Aperio scanners write; tifffile encodes JPEG through imagecodecs
        pytest.importorskip("imagecodecs")
    path = generate_slide(tmp_path / "scan.svs", size=1024, levels=3, tile=128, mpp=0.499, vendor="aperio",
                          compression=compression)
    slide = open_slide(path)
    info = slide_info(slide, path)
    assert info.vendor == "aperio" and info.mpp == pytest.approx(0.499)
    assert info.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert list(slide.associated_images) == ["thumbnail"] and slide.properties["aperio.AppMag"] == "20"
    tiles = tile_grid(slide, path, size=64, mpp=1.996, min_tissue=0.5)  # 4x coarser: level 2 exactly
    assert tiles and {t.level for t in tiles} == {2}
    assert np.asarray(tiles[0].load()).shape == (64, 64, 3)


def test_a_pyramidal_ome_tiff_is_read_with_its_levels_and_mpp(tmp_path):
    """An OME-TIFF as Bio-Formats writes it (the MPP in the OME-XML only, the pyramid in SubIFDs, which
    OpenSlide does not see): read with its three levels and the MPP from PhysicalSizeX; coarse tiles come
    from the coarse level; regions match the stored pixels and are transparent beyond the image."""
    import tifffile

    path = generate_slide(tmp_path / "scan.ome.tif", size=1024, levels=3, tile=128, mpp=0.25, vendor="ome")
    slide = open_slide(path)
    info = slide_info(slide, path)
    assert info.vendor == "ome-tiff" and info.mpp == pytest.approx(0.25)
    assert info.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert info.level_downsamples == (1.0, 2.0, 4.0)
    stored = [level.asarray() for level in tifffile.TiffFile(path).series[0].levels]
    region = np.asarray(slide.read_region((200, 328), 1, (150, 70)))  # level-0 corner, level-1 pixels
    assert region.shape == (70, 150, 4) and (region[..., 3] == 255).all()
    assert np.array_equal(region[..., :3], stored[1][164:234, 100:250])
    edge = np.asarray(slide.read_region((960, 960), 0, (128, 128)))
    assert np.array_equal(edge[:64, :64, :3], stored[0][960:, 960:]) and (edge[64:, :, 3] == 0).all()
    tiles = tile_grid(slide, path, size=64, mpp=1.0, min_tissue=0.5)  # 4x coarser: level 2 exactly
    assert tiles and {t.level for t in tiles} == {2}
    tile = np.asarray(tiles[len(tiles) // 2].load())
    assert tile.shape == (64, 64, 3) and tile.std() > 5  # tissue, not glass
    mask, downsample = tissue_mask(slide)
    assert downsample == pytest.approx(1.0) and 0.3 < mask.mean() < 0.7  # from a level, not level-0 strips


def test_an_ome_tiff_with_jpeg_tiles_and_a_forked_reader(tmp_path):
    """JPEG tiles (what converters usually write) decode through imagecodecs; a reader forked after the
    slide was opened reads through its own file handle (a shared offset would mix up the tiles)."""
    import multiprocessing

    import tifffile

    pytest.importorskip("imagecodecs")
    rng = np.random.default_rng(0)
    image = np.repeat(np.repeat(rng.integers(0, 255, (32, 48, 3), np.uint8), 16, 0), 16, 1)  # smooth blocks
    path = tmp_path / "jpeg.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        options = {"tile": (128, 128), "photometric": "rgb", "compression": "jpeg"}
        writer.write(image, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": 0.5}, **options)
        writer.write(np.ascontiguousarray(image[::2, ::2]), subfiletype=1, **options)
    slide = open_slide(path)
    assert slide.level_count == 2 and slide.properties["openslide.mpp-x"] == "0.5"
    region = np.asarray(slide.read_region((256, 128), 0, (256, 256)))[..., :3].astype(int)
    error = np.abs(region - image[128:384, 256:512])
    assert np.median(error) <= 1 and error.mean() < 8  # JPEG: close, not equal (colour edges are subsampled)
    assert np.abs(region - image[144:400, 256:512]).mean() > 4 * error.mean()  # and in the right place
    _OPENED["slide"] = slide  # the child inherits the open slide by fork, as DataLoader workers do
    with multiprocessing.get_context("fork").Pool(1) as pool:
        forked, reopened = pool.apply(_read_region_in_a_child)
    assert reopened and np.array_equal(forked, np.asarray(slide.read_region((0, 0), 1, (100, 100))))


_OPENED: dict = {}


def _read_region_in_a_child():
    import os

    slide = _OPENED["slide"]
    handle = slide._tiff
    region = np.asarray(slide.read_region((0, 0), 1, (100, 100)))
    return region, slide._tiff is not handle and slide._pid == os.getpid()


@pytest.mark.parametrize("description,expected", [
    ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
     '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" SizeX="8" SizeY="8"/></Image></OME>', 0.25),
    ('<?xml version="1.0"?><OME><Image><Pixels PhysicalSizeX="0.5"/></Image></OME>', 0.5),  # default unit: um
    ('<?xml version="1.0"?><OME><Image><Pixels PhysicalSizeX="-1"/></Image></OME>', None),
    ('<?xml version="1.0"?><OME><Image><Pixels PhysicalSizeX="1" PhysicalSizeXUnit="parsec"/></Image></OME>', None),
    ('<?xml version="1.0"?><OME><broken', None),
    ("Aperio Image Library v12", None),
])
def test_the_ome_xml_mpp_reader_takes_units_and_refuses_what_it_cannot_read(description, expected):
    from oncolens.data.ome_tiff import ome_mpp

    assert ome_mpp(description) == (pytest.approx(expected) if expected else None)


def test_a_dicom_wsi_series_is_read_with_its_levels_and_mpp(tmp_path):
    """A DICOM-WSI series written with pydicom (VL Whole Slide Microscopy Image, TILED_FULL, JPEG frames, one
    instance per level): OpenSlide 4 reads it through any instance, with the pyramid and the pixel spacing;
    `is_slide` tells it from a radiology DICOM; bags are made of the series once."""
    from oncolens.data.slides import is_slide
    from oncolens.models.bags import bag_inputs

    path = generate_slide(tmp_path / "tumour" / "case1", size=1024, levels=3, tile=256, mpp=0.5, vendor="dicom")
    assert path.name == "level-0.dcm" and len(list(path.parent.glob("*.dcm"))) == 3
    slide = open_slide(path)
    info = slide_info(slide, path)
    assert info.vendor == "dicom" and info.mpp == pytest.approx(0.5)
    assert info.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    tiles = tile_grid(slide, path, size=64, mpp=2.0, min_tissue=0.5)  # level 2 exactly
    assert tiles and {t.level for t in tiles} == {2}
    pixels = np.asarray(tiles[len(tiles) // 2].load()).astype(int)
    assert pixels.shape == (64, 64, 3) and pixels[..., 0].mean() > pixels[..., 1].mean()  # pink/purple tissue
    assert is_slide(path) and is_slide(path.parent / "level-2.dcm")
    dicom_file(tmp_path / "ct.dcm")
    assert not is_slide(tmp_path / "ct.dcm") and not is_slide(tmp_path / "missing.dcm")
    inputs = bag_inputs(tmp_path / "tumour")
    assert inputs.empty or list(inputs["label"]) == [""]
    inputs = bag_inputs(tmp_path)
    slides = inputs[inputs["path"].str.endswith("level-0.dcm")]
    assert len(slides) == 1 and slides["label"].iloc[0] == "tumour"  # the series once, labelled by its folder
    from oncolens.data.slides import slide_name, write_tiles

    assert slide_name(path) == slide_name(path.parent / "level-1.dcm") == "case1"  # the series, not the level
    assert slide_name(tmp_path / "scan.ome.tif") == "scan" and slide_name("a/b.svs") == "b"
    manifest = write_tiles([path], tmp_path / "tiles", size=64, mpp=2.0, slide_labels={"case1": {"label": "tumour"}})
    assert len(manifest) == len(tiles) and set(manifest["slide"]) == {"case1"} and set(manifest["label"]) == {"tumour"}


def test_a_tiff_is_a_slide_only_when_openslide_reads_it_as_one(tmp_path):
    """A stripped TIFF (a microscope's 1388 x 1040 export) is an image; a tiled or pyramidal one a slide."""
    import tifffile

    from oncolens.data.slides import is_slide

    pixels = np.random.default_rng(0).integers(0, 255, (260, 347, 3), np.uint8)
    tifffile.imwrite(tmp_path / "stripped.tif", pixels, photometric="rgb")
    tifffile.imwrite(tmp_path / "tiled.tiff", pixels, photometric="rgb", tile=(128, 128))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    assert not is_slide(tmp_path / "stripped.tif") and is_slide(tmp_path / "tiled.tiff")
    assert not is_slide(tmp_path / "broken.tif") and not is_slide(tmp_path / "missing.tif")
    assert is_slide(generate_slide(tmp_path / "p.ome.tif", size=512, levels=2, tile=128, vendor="ome"))
