"""Small synthetic inputs the tests make themselves (no downloads, no ../shared/data)."""

from __future__ import annotations

import io
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def noise_image(size: int = 32, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode)


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def dicom_file(path: Path, size: int = 32, patient_id: str = "PAT-1", seed: int = 0, frames: int = 1,
               claimed: tuple[int, int, int] | None = None, modality: str = "MR") -> Path:
    """A 16-bit MONOCHROME2 DICOM with a patient id and a window; ``frames`` > 1 makes a multi-frame
    file whose frame k is filled with the value 100 * k; ``claimed`` (frames, rows, columns) writes a
    header claiming that size over the small pixel data (a decompression-bomb header)."""
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    from oncolens.data.phantoms import dicom_dataset

    ds = dicom_dataset(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ds.PatientID = patient_id
    ds.Modality = modality
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = np.stack([np.full((size, size), 100 * k, dtype=np.uint16) for k in range(frames)]).tobytes()
    else:
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    if claimed:
        ds.NumberOfFrames, ds.Rows, ds.Columns = claimed
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_bad_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Write one file per kind of bad or unusual input under ``root/cls_a``.

    Returns ``{filename: ("ok", expected_mode) | ("skip", reason_fragment)}``.
    """
    folder = root / "cls_a"
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, tuple[str, str]] = {}

    (folder / "zero.png").write_bytes(b"")
    expected["zero.png"] = ("skip", "empty file")

    good_jpeg = io.BytesIO()
    noise_image(64).save(good_jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good_jpeg.getvalue()[: len(good_jpeg.getvalue()) // 2])
    expected["truncated.jpg"] = ("skip", "truncated")

    good_png = png_bytes(noise_image(64))
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    expected["truncated.png"] = ("skip", "truncated")

    (folder / "text.png").write_text("this is not an image\n")
    expected["text.png"] = ("skip", "not an image")

    (folder / "bomb.png").write_bytes(bomb_png())
    expected["bomb.png"] = ("skip", "too large")

    sixteen = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    save(Image.fromarray(sixteen), folder / "grey16.png")
    expected["grey16.png"] = ("ok", "L")

    save(noise_image(32).convert("CMYK"), folder / "cmyk.jpg")
    expected["cmyk.jpg"] = ("ok", "RGB")

    save(noise_image(32).convert("RGBA"), folder / "rgba.png")
    expected["rgba.png"] = ("ok", "RGB")

    save(noise_image(32).convert("P"), folder / "palette.png")
    expected["palette.png"] = ("ok", "RGB")

    save(noise_image(32, "L"), folder / "grey8.png")
    expected["grey8.png"] = ("ok", "L")

    save(noise_image(32, seed=3), folder / "ünïcödé ímage 名前.png")
    expected["ünïcödé ímage 名前.png"] = ("ok", "RGB")

    dicom_file(folder / "scan.dcm")
    expected["scan.dcm"] = ("ok", "L")
    return expected


#: the hostile corpus of model cards: ``model_card.json`` contents a bundle may carry (id -> bytes), each
#: damaged in another way; a huge card is made by :func:`huge_card`
DAMAGED_CARDS = {
    "not-json": b'{"name": "cut off here", ',
    "a-list": b"[1, 2, 3]",
    "a-string": b'"just text"',
    "not-utf8": b'{"name": "\xff\xfe"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "wrong-shapes": b'{"training_data": [1, 2], "evaluations": "none"}',
    "wrong-inner-shapes": b'{"training_data": {"images": "many", "classes_per_split": {"train": 3}}}',
}


def huge_card(path: Path, size: int = 200 * 2**20) -> Path:
    """A ``size``-byte ``model_card.json`` written in an instant (sparse: a JSON string of NUL bytes)."""
    with open(path, "wb") as stream:
        stream.write(b'{"name": "')
        stream.truncate(size - 2)
        stream.seek(size - 2)
        stream.write(b'"}')
    return path


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread (``with LoopbackServer(app) as base_url``)."""

    def __init__(self, app):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app

    def __enter__(self) -> str:
        import threading
        import time

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): torchrun's ranks run in their own process groups."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(pid: int) -> None:
    for target in [pid, *_descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def count_scored(monkeypatch) -> list[int]:
    """Record how many inputs each ``ModelBundle.iter_scores`` call is given (what a resumed run re-scores)."""
    from oncolens.models import ModelBundle

    calls: list[int] = []
    original = ModelBundle.iter_scores

    def counting(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(ModelBundle, "iter_scores", counting)
    return calls


def deflated_dicom(path: Path, rows: int = 32, cols: int = 32, frames: int = 1, pixel_bytes: int | None = None,
                   seed: int = 0) -> Path:
    """A DICOM in the deflated transfer syntax (the whole dataset raw-deflated). Small sizes get random 16-bit
    pixels; large ones (a decompression bomb) zeros, compressed as a stream so nothing large is held here.
    ``pixel_bytes`` writes that much pixel data whatever the header claims (a file that lies)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage

    from oncolens.data.phantoms import dicom_dataset

    ds = dicom_dataset(SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian)
    meta = ds.file_meta
    ds.PatientID, ds.Modality = "PAT-D", "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = frames * rows * cols * 2 if pixel_bytes is None else pixel_bytes
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [compressor.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))]
    if n <= 1 << 20:
        chunks.append(compressor.compress(np.random.default_rng(seed).integers(0, 4096, n // 2, np.uint16).tobytes()))
    else:
        zeros, left = bytes(1 << 24), n
        while left:
            chunks.append(compressor.compress(zeros[:min(left, len(zeros))]))
            left -= min(left, len(zeros))
    chunks.append(compressor.flush())
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + head.getvalue() + b"".join(chunks))
    return path


def peak_rss_mb(code: str) -> float:
    """Peak memory (VmHWM, MB) of a new Python process running ``code``: a child's own number, not the
    test process's (``ru_maxrss`` of a child inherits its parent's peak across exec)."""
    import subprocess
    import sys

    probe = code + ("\nprint('HWM', next(int(l.split()[1]) for l in open('/proc/self/status') "
                    "if l.startswith('VmHWM:')) / 1024)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("HWM")))


def wait_for_file_then_kill(process, path: Path, timeout: float = 300.0) -> None:
    """Kill ``process`` (and its children) with SIGKILL as soon as ``path`` exists: a crash mid-run."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            kill_tree(process.pid)
            raise AssertionError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)
    kill_tree(process.pid)
    process.wait(30)


def fails_cleanly(args: list, *words: str) -> str:
    """Run the oncolens command ``args`` (typer's runner): it must exit 2 with one clear message holding every
    word of ``words`` (any case) and no traceback; its output."""
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and all(w.lower() in result.output.lower() for w in words), result.output
    return result.output
