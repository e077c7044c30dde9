"""A seeded, bounded fuzz test of everything that reads image files.

Small real images (32x32 and 64x48 noise and gradients) in every format and mode Pillow can
write here (JPEG incl. progressive, CMYK, EXIF-rotated and MPO; PNG incl. RGBA, 16-bit,
palette; BMP, GIF incl. animated, TIFF incl. LZW/deflate/packbits/float/16-bit, WebP lossy
and lossless, ICO, ICNS, PPM/PGM/PBM, TGA incl. RLE, PCX, SGI, IM, DDS, QOI, JPEG 2000,
SPIDER, MSP, XBM, BLP, AVIF, EPS, DIB, PDF, PALM, ...) are mutated: truncated, bytes flipped
anywhere or in the header, size fields overwritten, headers swapped between formats,
slices inserted, deleted or repeated, garbage, empty files; and saved under a wrong
extension. Then:

- ``read_rgb`` on ``N_READ`` cases returns an ``(H, W, 3)`` uint8 array or raises
  ``MaskjobError``, nothing else;
- ``N_PIPELINE`` of them as inbox frames through the real scorer (SQLite): one row per file,
  status ``ok``/``no_face``/``unreadable``, ``unreadable`` exactly for the files ``read_rgb``
  refuses (or the models failed on); every second one through ``predict_files``: one result
  per file; and all as a dataset through ``check_dataset``: every file counted, and listed
  unreadable exactly when it is.

Bounded: the images are tiny and ``max_image_pixels`` is 250,000, so no case can make the
decoders or the detector slow. The same seed gives the same files. The classifier is a
1-epoch, 32 px cnn trained here on a synthetic dataset (a few seconds), so the module needs
no other fixture. Measured on the 2-core machine shared with other jobs: ~20-30 s for the
module (read_rgb's 6,000 cases take 1-2 s; predict and the training are the largest parts).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from maskjob import CLASSES
from maskjob.errors import MaskjobError
from maskjob.imageio import read_rgb
from maskjob.vocab import IMAGE_EXTENSIONS
from tests.fixtures.models import write_synthetic_dataset
from tests.fixtures.paths import REPO_ASSETS, REPO_TORCH_HOME

SEED = 20261124
N_READ = 6000
N_PIPELINE = 240
MAX_PIXELS = 250_000
START = datetime(2026, 11, 24, 8, 0, 0)

pytestmark = [
    pytest.mark.timeout(180),  # a hang fails the test instead of blocking the suite
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::DeprecationWarning"),
]


@dataclass(frozen=True)
class Case:
    name: str  # "<variant>-<mutation>"
    ext: str
    data: bytes


def _pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    y, x = np.mgrid[0:48, 0:64]
    gradient = np.stack([x * 4, y * 5, (x + y) * 2], axis=2).astype(np.uint8)
    return [noise, gradient]


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _variants() -> dict[str, bytes]:
    """``"<variant>.<picture>" -> bytes`` of the base images: explicit variants, then every
    other format Pillow can save in the first mode it accepts."""
    out: dict[str, bytes] = {}
    for k, rgb in enumerate(_pictures()):
        img = Image.fromarray(rgb)
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray((rgb[:, :, 0] // 2).astype(np.uint8)))
        exif = Image.Exif()
        exif[0x0112] = 6
        grey16 = Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16))
        palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        explicit = {
            "jpeg": (img, "JPEG", {}), "jpeg-grey": (img.convert("L"), "JPEG", {}),
            "jpeg-cmyk": (img.convert("CMYK"), "JPEG", {}), "jpeg-progressive": (img, "JPEG", {"progressive": True}),
            "jpeg-exif-rotated": (img, "JPEG", {"exif": exif}), "mpo": (img, "MPO", {}),
            "png": (img, "PNG", {}), "png-rgba": (rgba, "PNG", {}), "png-16bit": (grey16, "PNG", {}),
            "png-palette": (palette, "PNG", {"transparency": 0}), "png-1bit": (img.convert("1"), "PNG", {}),
            "bmp": (img, "BMP", {}), "bmp-palette": (palette, "BMP", {}), "bmp-1bit": (img.convert("1"), "BMP", {}),
            "gif": (palette, "GIF", {}),
            "gif-animated": (palette, "GIF", {"save_all": True, "append_images": [palette.rotate(90)], "duration": 50}),
            "tiff": (img, "TIFF", {}), "tiff-lzw": (img, "TIFF", {"compression": "tiff_lzw"}),
            "tiff-deflate": (img, "TIFF", {"compression": "tiff_adobe_deflate"}),
            "tiff-packbits": (img, "TIFF", {"compression": "packbits"}),
            "tiff-cmyk": (img.convert("CMYK"), "TIFF", {}), "tiff-float": (img.convert("F"), "TIFF", {}),
            "tiff-16bit": (grey16, "TIFF", {}),
            "webp": (img, "WEBP", {}), "webp-lossless": (rgba, "WEBP", {"lossless": True}),
            "ico": (img, "ICO", {}), "ppm": (img, "PPM", {}), "pgm": (img.convert("L"), "PPM", {}),
            "pbm": (img.convert("1"), "PPM", {}), "tga": (img, "TGA", {}),
            "tga-rle": (img, "TGA", {"compression": "tga_rle"}), "pcx": (img, "PCX", {}),
            "sgi": (img, "SGI", {}), "im": (img, "IM", {}), "dds": (img, "DDS", {}), "qoi": (img, "QOI", {}),
            "jpeg2000": (img, "JPEG2000", {}), "spider": (img.convert("F"), "SPIDER", {}),
            "msp": (img.convert("1"), "MSP", {}), "xbm": (img.convert("1"), "XBM", {}),
            "dib": (img, "DIB", {}), "eps": (img, "EPS", {}), "pdf": (img, "PDF", {}),
            "palm": (img.convert("1"), "PALM", {}), "blp": (palette, "BLP", {}), "avif": (img, "AVIF", {}),
        }
        if k == 0:  # ICNS always writes every size up to 1024 px: one base image is plenty
            explicit["icns"] = (img, "ICNS", {})
        for name, (source, fmt, kwargs) in explicit.items():
            try:
                out[f"{name}.{k}"] = _save(source, fmt, **kwargs)
            except Exception:  # noqa: BLE001, S112 - a format this Pillow build cannot write
                continue
        covered = {name.split(".")[0] for name in out}
        Image.init()
        for fmt in sorted(Image.SAVE):
            if fmt.lower() in covered:
                continue
            for mode in ("RGB", "L", "1", "P", "F"):
                try:
                    out[f"{fmt.lower()}.{k}"] = _save(img.convert(mode), fmt)
                    break
                except Exception:  # noqa: BLE001, S112 - stub formats (BUFR, GRIB, HDF5, WMF) have no writer
                    continue
    return out


def _mutations(rng: random.Random, data: bytes, others: list[bytes]) -> dict[str, bytes]:
    """Every mutation of ``data``, randomised by ``rng``."""
    n = len(data)

    def flipped(span: int, count: int) -> bytes:
        out = bytearray(data)
        for _ in range(count):
            out[rng.randrange(min(span, n))] = rng.randrange(256)
        return bytes(out)

    def special_byte() -> bytes:  # one header byte set to a boundary value: size, mode, count fields
        out = bytearray(data)
        out[rng.randrange(min(128, n))] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
        return bytes(out)

    def overwritten() -> bytes:
        out = bytearray(data)
        at = rng.randrange(min(64, n))
        out[at:at + 4] = bytes([rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))] * 4)
        return bytes(out)

    cut = rng.randrange(1, max(n, 2))
    other = rng.choice(others)
    start, length = rng.randrange(n), rng.randint(1, 64)
    return {
        "valid": data,
        "truncated": data[:cut],
        "truncated-header": data[: rng.randint(1, min(24, n))],
        "flipped": flipped(n, rng.randint(1, 16)),
        "flipped-header": flipped(64, rng.randint(1, 4)),
        "size-fields": overwritten(),
        "header-byte": special_byte(),
        "header-byte-2": special_byte(),
        "swapped-header": other[:16] + data[16:],
        "inserted": data[:start] + bytes(rng.randrange(256) for _ in range(length)) + data[start:],
        "deleted": data[:start] + data[start + length:],
        "repeated": data[:start] + data[start:start + length] * rng.randint(2, 50) + data[start:],
        "zero-tail": data[: n // 2] + bytes(n - n // 2),
        "garbage": bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))),
        "empty": b"",
    }


def build_corpus() -> list[Case]:
    """``N_READ`` cases, the same for the same seed: rounds of every mutation of every
    variant (freshly randomised each round), each under a random (often wrong) extension."""
    rng = random.Random(SEED)
    variants = _variants()
    bases = list(variants.values())
    exts = sorted(IMAGE_EXTENSIONS) + [".JPG", ".gif", ".tif"]
    cases: list[Case] = []
    while len(cases) < N_READ:
        for name, data in variants.items():
            for kind, mutated in _mutations(rng, data, bases).items():
                cases.append(Case(f"{name}-{kind}", rng.choice(exts), mutated))
    return cases[:N_READ]


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return build_corpus()


def _outcome(data: bytes, name: str) -> str | None:
    """``None`` when ``read_rgb`` decodes it (checking the array), else the reason."""
    try:
        rgb = read_rgb(name, MAX_PIXELS, data=data)
    except MaskjobError as exc:
        return str(exc)
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8, name
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] >= 1 and rgb.shape[1] >= 1, (name, rgb.shape)
    assert rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS, (name, rgb.shape)
    return None


def test_variants_cover_the_common_formats(corpus):
    names = {c.name.split(".")[0].split("-")[0] for c in corpus}
    assert {"jpeg", "png", "bmp", "gif", "tiff", "webp", "ico", "ppm", "tga", "pcx", "sgi", "qoi", "dds", "mpo",
            "jpeg2000", "avif", "icns", "spider", "eps", "pdf"} <= names


def test_read_rgb_returns_an_array_or_raises_maskjob_error(corpus):
    failures: list[str] = []
    decoded = 0
    for case in corpus:
        try:
            decoded += _outcome(case.data, f"{case.name}{case.ext}") is None
        except MaskjobError:
            raise
        except Exception as exc:  # noqa: BLE001 - collected, so one run shows every escape
            failures.append(f"{case.name}{case.ext}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} cases escaped read_rgb:\n" + "\n".join(failures[:20])
    assert 0.1 * len(corpus) < decoded < 0.9 * len(corpus)  # the corpus exercises both outcomes


@dataclass(frozen=True)
class Pipeline:
    inbox: Path
    dataset: Path
    frames: dict[str, str | None]  # inbox-relative path -> read_rgb's reason (None: decodes)
    items: dict[str, str | None]  # dataset-relative path -> same
    clean: set[str]  # dataset files added so every class folder has one good image


@pytest.fixture(scope="module")
def pipeline(corpus, tmp_path_factory) -> Pipeline:
    """``N_PIPELINE`` cases (spread over the variants) as inbox frames and dataset files,
    with image extensions so that discovery and the dataset scan list every one."""
    base = tmp_path_factory.mktemp("fuzz")
    inbox, dataset = base / "inbox", base / "dataset"
    rng = random.Random(SEED + 1)
    exts = sorted(IMAGE_EXTENSIONS) + [".JPG", ".Png"]
    picked = corpus[:: len(corpus) // N_PIPELINE][:N_PIPELINE]
    frames: dict[str, str | None] = {}
    items: dict[str, str | None] = {}
    folders = [f"{split}/{cls}" for split in ("train", "test") for cls in CLASSES]
    for i, case in enumerate(picked):
        ext = rng.choice(exts)
        outcome = _outcome(case.data, case.name)
        rel = f"cam{i % 4}/{START + timedelta(seconds=i):%Y%m%dT%H%M%S}_{case.name}{ext}"
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(case.data)
        frames[rel] = outcome
        item = f"{folders[i % len(folders)]}/{i:04d}_{case.name}{ext}"
        (dataset / item).parent.mkdir(parents=True, exist_ok=True)
        (dataset / item).write_bytes(case.data)
        items[item] = outcome
    clean_root = write_synthetic_dataset(base / "clean", n_train=1, n_test=1, seed=SEED)
    clean = set()
    for folder in folders:
        (src,) = (clean_root / folder).iterdir()
        (dataset / folder / src.name).write_bytes(src.read_bytes())
        clean.add(f"{folder}/{src.name}")
    return Pipeline(inbox, dataset, frames, items, clean)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Settings for the pipeline and a 1-epoch, 32 px cnn trained on a synthetic dataset."""
    from maskjob.config import load_settings
    from maskjob.ml.train import train_model

    base = tmp_path_factory.mktemp("fuzz-model")
    values = {"data_dir": base / "data", "assets_dir": REPO_ASSETS, "torch_home": REPO_TORCH_HOME,
              "num_workers": 0, "detector": "mtcnn", "max_image_pixels": MAX_PIXELS, "score_batch_frames": 16,
              "database_url": f"sqlite:///{base / 'fuzz.db'}"}
    plain = load_settings(config_path=None, overrides=values, environ={})
    root = write_synthetic_dataset(base / "train-data", n_train=6, n_test=2, seed=SEED)
    checkpoint = train_model("cnn", root, base / "models", plain, max_epochs=1, image_size=32).checkpoint_path
    return plain, checkpoint


def test_score_stores_one_row_per_file(pipeline, settings):
    from maskjob.scoring.score import score
    from maskjob.storage import database, schema
    from tests.scoring.test_score import use_champion

    plain, checkpoint = settings
    use_champion(plain.database_url, checkpoint)
    engine = database.make_engine(plain.database_url)
    try:
        summary = score(engine, plain, pipeline.inbox)
        with engine.connect() as conn:
            rows = {r.path: (r.status, r.reason) for r in conn.execute(sa.select(schema.Image.path, schema.Image.status,
                                                                                 schema.Image.reason))}
            run = conn.execute(sa.select(schema.ScoringRun)).one()
    finally:
        engine.dispose()
    assert set(rows) == set(pipeline.frames)
    for rel, outcome in pipeline.frames.items():
        status, reason = rows[rel]
        assert status in {"ok", "no_face", "unreadable"}, rel
        if outcome is None:  # decodes: scored, or the models failed on it (recorded as such)
            assert status != "unreadable" or "face detection or classification failed" in reason, (rel, reason)
        else:
            assert status == "unreadable" and reason, (rel, reason)
    n_bad = sum(o is not None for o in pipeline.frames.values())
    assert (summary.n_frames, run.status, run.n_frames) == (N_PIPELINE, "succeeded", N_PIPELINE)
    assert summary.n_unreadable >= n_bad


def test_predict_files_returns_one_result_per_file(pipeline, settings):
    from maskjob.scoring.predict import predict_files

    plain, checkpoint = settings
    picked = list(pipeline.frames.items())[::2]  # predict detects one file at a time: half is plenty
    paths = [pipeline.inbox / rel for rel, _ in picked]
    results = predict_files(paths, plain, checkpoint=checkpoint)
    assert len(results) == len(paths)
    for (rel, outcome), result in zip(picked, results):
        assert result["path"].endswith(rel), (rel, result["path"])
        assert result["mode"] in {"detected", "whole_image", "no_face", "unreadable"}, rel
        if outcome is None:
            assert result["mode"] != "unreadable" or "face detection or classification failed" in result["error"]
        else:
            assert result["mode"] == "unreadable" and result["error"], rel


def test_check_dataset_counts_every_file_or_lists_it(pipeline):
    from maskjob.ml.dataset import check_dataset

    check = check_dataset(pipeline.dataset, MAX_PIXELS)
    listed = {u["path"] for u in check.unreadable}
    assert sum(sum(per.values()) for per in check.counts.values()) == len(pipeline.items) + len(pipeline.clean)
    assert listed == {item for item, outcome in pipeline.items.items() if outcome is not None}
    assert not listed & pipeline.clean
    check.format_text()
