"""A hostile file system never hangs, crashes or loses a run.

Real FIFOs, UNIX sockets, a character device, symlink loops, dangling links, links leaving
the inbox, links to folders and to FIFOs, file and folder names that are not valid UTF-8,
folders that cannot be listed or examined, and malformed images that make the decoder raise
exception types other than ``OSError`` (AttributeError, NotImplementedError, RuntimeError,
DecompressionBombError): discovery records each as an ``unreadable`` frame with a reason,
the scorer stores a row for each next to the good frames of the same batch (SQLite and
PostgreSQL), ``predict_files`` returns a result per file, ``check_dataset`` lists every bad
file, training skips them, and the compliance report shows a placeholder for each.

Every test has a timeout: a hang (the old behaviour on a FIFO) fails instead of blocking.

Unreadable folders: the tests run as root, which ignores permission bits. A real ``chmod
000`` / ``chmod 600`` folder is checked in a subprocess that drops root's file-permission
override (``setpriv --bounding-set=-dac_override,-dac_read_search``, as
``test_score_bad_input`` does); the scoring runs in-process patch ``os.scandir`` to raise
``PermissionError`` for one folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from maskjob.errors import MaskjobError
from maskjob.imageio import ImageReadError, display_path, max_file_bytes, read_rgb, sha256_file
from maskjob.scoring import score as score_module
from maskjob.scoring.frames import decode_frame, discover_frames, scan_inbox
from maskjob.scoring.score import score
from maskjob.storage import database, schema
from tests.scoring.test_score import TEST_DETECTOR, copy_inbox, score_settings, use_champion

REPO = Path(__file__).resolve().parents[2]
HOSTILE_CAM = "cam-hostile"


def T(i: int) -> str:
    """A frame name stamped 2026-11-24 13:00:<i>."""
    return f"20261124T1300{i:02d}"


def _mutated(fmt: str, mode: str, index: int, value: int) -> bytes:
    """A 16x16 image Pillow wrote in ``fmt``, with byte ``index`` set to ``value``: with the
    pinned Pillow each of the cases below makes the decoder raise an exception type that is
    not an ``OSError``/``ValueError`` (found by the fuzz test's generator)."""
    img = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    data[index] = value
    return bytes(data)


# name -> (bytes, reason pattern): decoders raising unexpected exception types
MALFORMED = {
    "spider": (lambda: _mutated("SPIDER", "F", 107, 127), "AttributeError"),
    "dds": (lambda: _mutated("DDS", "RGB", 80, 0), "NotImplementedError"),
    "avif": (lambda: _mutated("AVIF", "RGB", 81, 0), "RuntimeError"),
    "bmp-bomb": (lambda: _mutated("BMP", "RGB", 20, 255), "decompression bomb"),
    "eps": (lambda: _encoded("EPS"), "not a recognised image"),  # never rendered (Ghostscript)
}
# Reasons only decoding can find (discovery lists these frames as readable).
DECODE_PATTERNS = {pattern for _, pattern in MALFORMED.values()}


def _encoded(fmt: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, format=fmt)
    return buf.getvalue()


def _bind_socket(path: Path) -> None:
    """A UNIX socket file at ``path`` (bound by a relative name: socket paths are limited to
    108 bytes, temp paths can be longer)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path.name)
        sock.close()  # the socket file stays
    finally:
        os.chdir(here)


def _mknod_null(path: Path) -> bool:
    """A character device (like /dev/null) at ``path``; False where mknod is not allowed."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def _write_bytes_name(folder: Path, name: bytes, data: bytes, when: datetime | None = None) -> str:
    """Write ``data`` to a file whose name is raw (possibly non-UTF-8) bytes; its display path."""
    path = os.fsencode(folder) + b"/" + name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if when is not None:
        stamp = when.replace(tzinfo=UTC).timestamp()
        os.utime(path, (stamp, stamp))
    return display_path(os.fsdecode(path))


def make_hostile_inbox(inbox: Path, good: bytes, outside: Path) -> dict[str, str | None]:
    """Hostile entries under ``inbox``; returns inbox-relative display path -> expected reason
    pattern (``None``: a readable frame)."""
    cam = inbox / HOSTILE_CAM
    cam.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def rel(name: str) -> str:
        return f"{HOSTILE_CAM}/{name}"

    os.mkfifo(cam / f"{T(0)}.jpg")
    expected[rel(f"{T(0)}.jpg")] = "named pipe (FIFO), not a regular file"
    _bind_socket(cam / f"{T(1)}.jpg")
    expected[rel(f"{T(1)}.jpg")] = "a socket, not a regular file"
    if _mknod_null(cam / f"{T(2)}.jpg"):
        expected[rel(f"{T(2)}.jpg")] = "a character device, not a regular file"
    (cam / f"{T(3)}.jpg").symlink_to(f"{T(3)}.jpg")  # points at itself
    expected[rel(f"{T(3)}.jpg")] = "symlink loop"
    (cam / f"{T(4)}.jpg").symlink_to(f"{T(5)}.jpg")  # a two-link loop
    (cam / f"{T(5)}.jpg").symlink_to(f"{T(4)}.jpg")
    expected[rel(f"{T(4)}.jpg")] = expected[rel(f"{T(5)}.jpg")] = "symlink loop"
    (cam / f"{T(6)}.jpg").symlink_to("gone.jpg")
    expected[rel(f"{T(6)}.jpg")] = "dangling symlink"
    (outside / "elsewhere.jpg").write_bytes(good)
    (cam / f"{T(7)}.jpg").symlink_to(outside / "elsewhere.jpg")
    expected[rel(f"{T(7)}.jpg")] = "symlink points outside the inbox"
    os.mkfifo(outside / "pipe")
    (cam / f"{T(8)}.jpg").symlink_to(outside / "pipe")  # opening it would block forever
    expected[rel(f"{T(8)}.jpg")] = "symlink points outside the inbox"
    (inbox / "cam-folder").mkdir(exist_ok=True)
    (cam / f"{T(9)}.jpg").symlink_to(inbox / "cam-folder")
    expected[rel(f"{T(9)}.jpg")] = "symlink to a directory"
    (cam / f"{T(10)}.jpg").symlink_to(f"{T(0)}.jpg")  # inside the inbox, to the FIFO
    expected[rel(f"{T(10)}.jpg")] = "symlink to a named pipe (FIFO)"
    # Names that are not valid UTF-8: stored escaped, with the reason; time from the name or mtime.
    shown = _write_bytes_name(cam, b"\xff\xfe.jpg", good, when=datetime(2026, 11, 24, 13, 0, 11))
    expected[shown.removeprefix(f"{inbox}/")] = "not valid UTF-8"
    shown = _write_bytes_name(cam, T(12).encode() + b"_caf\xe9.jpg", good)
    expected[shown.removeprefix(f"{inbox}/")] = "not valid UTF-8"
    bad_camera = os.fsencode(inbox) + b"/cam-\xff"
    os.makedirs(bad_camera, exist_ok=True)
    shown = _write_bytes_name(Path(os.fsdecode(bad_camera)), f"{T(13)}.jpg".encode(), good)
    expected[shown.removeprefix(f"{inbox}/")] = "not valid UTF-8"
    # Malformed images whose decoder raises something other than OSError.
    for i, (kind, (make, pattern)) in enumerate(MALFORMED.items(), start=14):
        (cam / f"{T(i)}_{kind}.jpg").write_bytes(make())
        expected[rel(f"{T(i)}_{kind}.jpg")] = pattern
    # Readable oddities: a PNG named .jpg, and a path longer than any 1024-character column.
    (cam / f"{T(30)}_png.jpg").write_bytes(_encoded("PNG", (64, 48)))
    expected[rel(f"{T(30)}_png.jpg")] = None
    deep = inbox / ("c" * 200) / ("d" * 250) / ("e" * 250) / ("f" * 250) / ("g" * 250)
    deep.mkdir(parents=True)
    (deep / f"{T(31)}.jpg").write_bytes(good)
    expected[(deep / f"{T(31)}.jpg").relative_to(inbox).as_posix()] = None
    # A symlinked camera folder is not followed (a run-level warning), nor a hidden one.
    (inbox / "cam-linked").symlink_to(inbox / "cam-folder")
    return expected


@pytest.fixture
def hostile(tmp_path, tiny_demo):
    """(inbox, expected reasons, good demo frame paths) in a private copy of the tiny inbox."""
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    good_frames = [f.rel_path for f in discover_frames(inbox)]
    face_frame = max(discover_frames(inbox), key=lambda f: f.path.stat().st_size).path
    expected = make_hostile_inbox(inbox, face_frame.read_bytes(), tmp_path / "outside")
    return inbox, expected, good_frames


def _locked(monkeypatch, folder: Path) -> None:
    """``os.scandir`` raises PermissionError for ``folder``, as for a mode-000 folder without root."""
    real = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) == os.path.realpath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.timeout(60, func_only=True)
def test_discovery_records_every_hostile_entry(hostile, monkeypatch):
    inbox, expected, good_frames = hostile
    locked = inbox / "cam-locked"
    locked.mkdir()
    (locked / f"{T(40)}.jpg").write_bytes(b"never listed")
    _locked(monkeypatch, locked)

    scan = scan_inbox(inbox)

    by_rel = {f.rel_path: f for f in scan.frames}
    assert set(by_rel) == set(expected) | set(good_frames)
    for rel, pattern in expected.items():
        frame = by_rel[rel]
        rel.encode("utf-8")  # always storable text
        if pattern is None or pattern in DECODE_PATTERNS:
            assert frame.reason is None, (rel, frame.reason)
        else:
            assert frame.reason and pattern in frame.reason, (rel, frame.reason)
    assert all(by_rel[rel].reason is None for rel in good_frames)
    # Time: from the name where it has one, else lstat's mtime; nothing was opened to find it.
    assert by_rel[f"{HOSTILE_CAM}/{T(0)}.jpg"].captured_at == datetime(2026, 11, 24, 13, 0, 0)
    no_name = by_rel[f"{HOSTILE_CAM}/\\xff\\xfe.jpg"]
    assert (no_name.time_source, no_name.captured_at) == ("mtime", datetime(2026, 11, 24, 13, 0, 11))
    assert by_rel[f"cam-\\xff/{T(13)}.jpg"].camera_id == "cam-\\xff"
    # Interval filtering works on such frames too.
    window = scan_inbox(inbox, datetime(2026, 11, 24, 13, 0, 0), datetime(2026, 11, 24, 13, 0, 12))
    assert {f.rel_path for f in window.frames} >= {f"{HOSTILE_CAM}/{T(0)}.jpg", f"{HOSTILE_CAM}/\\xff\\xfe.jpg"}
    assert f"{HOSTILE_CAM}/{T(14)}_spider.jpg" not in {f.rel_path for f in window.frames}
    # One run-level warning per folder that cannot be listed / folder symlink not followed.
    assert any("cam-locked could not be listed" in w and "permission denied" in w for w in scan.warnings)
    assert any("folder symlink cam-linked is not followed" in w for w in scan.warnings)
    assert discover_frames(inbox) == scan.frames


@pytest.mark.timeout(60, func_only=True)
def test_decode_frame_turns_each_into_a_reason(hostile):
    inbox, expected, good_frames = hostile
    by_rel = {f.rel_path: f for f in discover_frames(inbox)}
    for rel, pattern in expected.items():
        decoded = decode_frame(by_rel[rel], inbox.resolve(), 40_000_000)
        if pattern is None:
            assert decoded.reason is None and decoded.rgb.ndim == 3, (rel, decoded.reason)
        else:
            assert decoded.rgb is None and pattern in decoded.reason, (rel, decoded.reason)
            decoded.reason.encode("utf-8")
    assert all(decode_frame(by_rel[rel], inbox.resolve(), 40_000_000).reason is None for rel in good_frames)


@pytest.mark.timeout(60)
def test_an_inbox_that_cannot_be_listed_is_an_actionable_error(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _locked(monkeypatch, inbox)
    with pytest.raises(MaskjobError, match="cannot list the inbox .*permission denied"):
        scan_inbox(inbox)


_SCAN_SCRIPT = """
import json, sys
from maskjob.scoring.frames import scan_inbox
scan = scan_inbox(sys.argv[1])
print(json.dumps({"frames": {f.rel_path: f.reason for f in scan.frames}, "warnings": scan.warnings}))
"""


@pytest.mark.timeout(60)
def test_real_unreadable_folders_without_root_privileges(tmp_path):
    """chmod 000 (cannot list) and chmod 600 (can list, cannot examine) camera folders, with
    root's permission override dropped in a subprocess."""
    inbox = tmp_path / "inbox"
    for name in ("cam-ok", "cam-000", "cam-600"):
        (inbox / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(inbox / name / f"{T(0)}.jpg")
    (inbox / "cam-600" / "frame_without_time.jpg").write_bytes(b"x")
    (inbox / "cam-000").chmod(0)
    (inbox / "cam-600").chmod(0o600)
    cmd = [sys.executable, "-c", _SCAN_SCRIPT, str(inbox)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=50, check=False)
    finally:
        for name in ("cam-000", "cam-600"):
            (inbox / name).chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert found["frames"][f"cam-ok/{T(0)}.jpg"] is None
    assert "cannot examine the file: permission denied" in found["frames"][f"cam-600/{T(0)}.jpg"]
    assert not any(rel.startswith("cam-000/") for rel in found["frames"])
    assert any(w.startswith("folder cam-000 could not be listed (permission denied") for w in found["warnings"])
    # A file that can be neither examined nor placed in time by its name: a warning, not lost silently.
    assert any("cam-600/frame_without_time.jpg" in w and "no time stamp" in w for w in found["warnings"])


def _images(url: str) -> dict[str, dict]:
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            return {r.path: r._asdict() for r in conn.execute(sa.select(schema.Image))}
    finally:
        engine.dispose()


@pytest.mark.timeout(240, func_only=True)
def test_score_stores_a_row_for_every_hostile_frame_and_the_good_ones(db_url, hostile, tiny_demo,
                                                                      tiny_checkpoints, monkeypatch):
    """One scoring run over the whole hostile inbox (small batches, so bad and good frames
    share batches): every frame gets a row, bad ones ``unreadable`` with their reason. A
    frame replaced by a FIFO after discovery is refused too, without blocking."""
    inbox, expected, good_frames = hostile
    use_champion(db_url, tiny_checkpoints["cnn"])
    locked = inbox / "cam-locked"
    locked.mkdir()
    (locked / f"{T(40)}.jpg").write_bytes(b"never listed")
    _locked(monkeypatch, locked)
    swapped = good_frames[1]
    for name in ("discover_frames", "scan_inbox"):  # whichever the scorer lists frames with
        real = getattr(score_module, name, None)
        if real is not None:
            def listed_then_swapped(*args, _real=real, **kwargs):
                found = _real(*args, **kwargs)
                (inbox / swapped).unlink()
                os.mkfifo(inbox / swapped)
                return found
            monkeypatch.setattr(score_module, name, listed_then_swapped)

    engine = database.make_engine(db_url)
    try:
        summary = score(engine, score_settings(tiny_demo.settings, score_batch_frames=4), inbox)
        with engine.connect() as conn:
            run = conn.execute(sa.select(schema.ScoringRun)).one()
    finally:
        engine.dispose()
    rows = _images(db_url)
    assert set(rows) == set(expected) | set(good_frames)
    for rel, pattern in expected.items():
        row = rows[rel]
        if pattern is None:
            assert row["status"] in {"ok", "no_face"} and row["reason"] is None, (rel, row["reason"])
        else:
            assert row["status"] == "unreadable" and pattern in row["reason"], (rel, row["reason"])
    assert rows[swapped]["status"] == "unreadable" and "named pipe (FIFO)" in rows[swapped]["reason"]
    good = [rows[rel] for rel in good_frames if rel != swapped]
    assert all(r["status"] in {"ok", "no_face"} for r in good) and sum(r["n_faces"] for r in good) > 0
    assert rows[f"{HOSTILE_CAM}/\\xff\\xfe.jpg"]["camera_id"] == HOSTILE_CAM
    assert rows[f"cam-\\xff/{T(13)}.jpg"]["camera_id"] == "cam-\\xff"
    long_rel = next(rel for rel in expected if rel.startswith("c" * 200))
    assert len(long_rel) > 1024 and rows[long_rel]["camera_id"] == "c" * 200
    n_bad = sum(p is not None for p in expected.values()) + 1
    assert (summary.n_frames, summary.n_unreadable) == (len(rows), n_bad)
    assert (run.status, run.n_frames, run.n_unreadable) == ("succeeded", len(rows), n_bad)

    # A rerun (same hostile inbox) adds nothing and fails on nothing.
    engine = database.make_engine(db_url)
    try:
        again = score(engine, score_settings(tiny_demo.settings, score_batch_frames=4), inbox)
    finally:
        engine.dispose()
    assert (again.n_frames, again.n_skipped) == (0, len(rows))
    assert _images(db_url).keys() == rows.keys()


@pytest.mark.timeout(240, func_only=True)
def test_predict_returns_a_result_for_every_file(hostile, tiny_demo, tiny_checkpoints, tmp_path, capsys,
                                                  monkeypatch):
    from maskjob.cli import main
    from maskjob.scoring.predict import predict_files

    inbox, _, good_frames = hostile
    cam = inbox / HOSTILE_CAM
    good = inbox / good_frames[0]
    non_utf8 = os.fsdecode(os.fsencode(cam) + b"/\xff\xfe.jpg")
    files = {
        "good": (good, None),
        "fifo": (cam / f"{T(0)}.jpg", "named pipe (FIFO)"),
        "socket": (cam / f"{T(1)}.jpg", "a socket"),
        "device": (Path("/dev/null"), "a character device"),
        "loop": (cam / f"{T(3)}.jpg", "symlink loop"),
        "dangling": (cam / f"{T(6)}.jpg", "dangling symlink"),
        "link-to-fifo": (cam / f"{T(10)}.jpg", "named pipe (FIFO)"),
        "folder": (inbox / "cam-folder", "is a directory"),
        "missing": (cam / "nope.jpg", "file not found"),
        "non-utf8": (Path(non_utf8), None),  # predict reads it: nothing is stored
        **{kind: (cam / f"{T(i)}_{kind}.jpg", pattern) for i, (kind, (_, pattern)) in enumerate(MALFORMED.items(), 14)},
    }
    settings = score_settings(tiny_demo.settings)
    out_dir = tmp_path / "annotated"
    results = predict_files([p for p, _ in files.values()], settings, out_dir, checkpoint=tiny_checkpoints["cnn"])
    assert len(results) == len(files)
    for (kind, (path, pattern)), result in zip(files.items(), results):
        json.dumps(result, ensure_ascii=False).encode("utf-8")  # every value is printable text
        if pattern is None:
            assert result["mode"] in {"detected", "no_face", "whole_image"} and result["error"] is None, (kind, result)
        else:
            assert result["mode"] == "unreadable" and pattern in result["error"], (kind, result)
    assert results[list(files).index("non-utf8")]["path"].endswith("/\\xff\\xfe.jpg")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([good.name, "\\xff\\xfe.jpg"])

    # The command prints every result (names that are not UTF-8 included) and exits 1.
    capsys.readouterr()
    argv = ["--data-dir", str(tmp_path / "data"), "predict", "--model", str(tiny_checkpoints["cnn"])]
    monkeypatch.setenv("MASKJOB_DETECTOR", TEST_DETECTOR)
    monkeypatch.setenv("MASKJOB_ASSETS_DIR", str(tiny_demo.settings.assets_dir))
    code = main([*argv, str(good), str(cam / f"{T(0)}.jpg"), non_utf8, str(cam / f"{T(14)}_spider.jpg")])
    out = capsys.readouterr().out
    assert code == 1
    assert "named pipe (FIFO)" in out and "AttributeError" in out and "\\xff\\xfe.jpg" in out


def _hostile_dataset(root: Path) -> tuple[set[str], set[str]]:
    """Hostile entries in a synthetic dataset: (paths check_dataset must list unreadable,
    readable extra paths), relative to the root as the report shows them."""
    folder = root / "train" / "with_mask"
    bad = set()
    os.mkfifo(folder / "fifo.jpg")
    _bind_socket(folder / "socket.png")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "dangling.jpg").symlink_to("gone.jpg")
    (folder / "link-to-fifo.jpg").symlink_to("fifo.jpg")
    bad |= {f"train/with_mask/{n}" for n in ("fifo.jpg", "socket.png", "loop.jpg", "dangling.jpg", "link-to-fifo.jpg")}
    if _mknod_null(folder / "device.jpg"):
        bad.add("train/with_mask/device.jpg")
    for kind, (make, _) in MALFORMED.items():
        (root / "test" / "partial_mask" / f"{kind}.png").write_bytes(make())
        bad.add(f"test/partial_mask/{kind}.png")
    (folder / "sub.jpg").mkdir()  # a folder named like an image: not an image
    readable = {_write_bytes_name(folder, b"\xff\xfe.png", (root / "test" / "with_mask" / "with_mask_000.png")
                                  .read_bytes()).removeprefix(f"{root}/")}
    return bad, readable


@pytest.mark.timeout(120, func_only=True)
def test_check_dataset_lists_every_hostile_file_and_training_skips_them(synthetic_dataset, settings_factory,
                                                                         tmp_path, caplog, capsys):
    from maskjob.cli import main
    from maskjob.ml.dataset import check_dataset, dataset_fingerprint, scan_dataset
    from maskjob.ml.loaders import make_loaders
    from maskjob.ml.models import IMAGENET_MEAN, IMAGENET_STD
    from maskjob.ml.train import train_model

    root = synthetic_dataset(n_train=4, n_test=2)
    clean = {p.relative_to(root).as_posix() for items in scan_dataset(root).splits.values() for p, _ in items}
    bad, readable = _hostile_dataset(root)

    check = check_dataset(root, 10_000_000)
    reasons = {u["path"]: u["reason"] for u in check.unreadable}
    assert set(reasons) == bad
    assert sum(sum(c.values()) for c in check.counts.values()) == len(clean | bad | readable)
    assert "named pipe (FIFO)" in reasons["train/with_mask/fifo.jpg"]
    assert "symlink loop" in reasons["train/with_mask/loop.jpg"]
    assert "dangling symlink" in reasons["train/with_mask/dangling.jpg"]
    assert "AttributeError" in reasons["test/partial_mask/spider.png"]
    assert "RuntimeError" in reasons["test/partial_mask/avif.png"]
    check.format_text().encode("utf-8")
    json.dumps(check.to_dict(), ensure_ascii=False).encode("utf-8")
    # The copy with a name that is not UTF-8 is read, and found to duplicate a test image.
    assert check.duplicates[0]["train"] == sorted(readable)
    assert check.fingerprint is None  # some files could not be read at all
    fingerprint = dataset_fingerprint(root)
    assert fingerprint == dataset_fingerprint(root)

    capsys.readouterr()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "fifo.jpg" in out and "spider.png" in out and "PROBLEMS FOUND" in out

    settings = settings_factory(batch_size=8, num_workers=0, seed=5)
    with caplog.at_level(logging.WARNING):
        loaders = make_loaders(root, 32, settings, IMAGENET_MEAN, IMAGENET_STD)
        result = train_model("cnn", root, tmp_path / "models", settings, max_epochs=1, image_size=32)
    assert {p.relative_to(root).as_posix() for p, _ in loaders.skipped} == bad
    assert "skipping unreadable image" in caplog.text and "fifo.jpg" in caplog.text
    assert result.checkpoint_path.is_file() and result.meta["dataset_fingerprint"] == fingerprint


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exc", [
    ZeroDivisionError("division by zero"), IndexError("list index out of range"), TypeError("bad operand"),
    KeyError("tag"), RuntimeError("decoder state"), MemoryError(), RecursionError("too deep"),
    NotImplementedError("mode"), AttributeError("no stkoffset"), EOFError(), SyntaxError("bad header"),
    ValueError("bad value"), OSError("broken data stream"), struct.error("unpack requires"),
    Image.DecompressionBombError("too many pixels"),
], ids=lambda e: type(e).__name__)
def test_read_rgb_turns_anything_the_decoder_raises_into_the_files_error(exc, monkeypatch):
    real_open = Image.open

    def failing_open(*args, **kwargs):
        img = real_open(*args, **kwargs)

        def load():
            raise exc

        img.load = load
        return img

    monkeypatch.setattr(Image, "open", failing_open)
    with pytest.raises(ImageReadError) as info:
        read_rgb("frame.jpg", data=_encoded("PNG"))
    assert isinstance(info.value, MaskjobError) and info.value.reason and str(info.value).startswith("frame.jpg: ")


@pytest.mark.timeout(60)
def test_readers_refuse_special_and_oversized_files_unread(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageReadError, match="named pipe"):
        read_rgb(tmp_path / "pipe.jpg")
    with pytest.raises(OSError, match="named pipe"):
        sha256_file(tmp_path / "pipe.jpg")
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as fh:
        fh.truncate(max_file_bytes(1000) + 1)  # no data written: instant, takes no disk
    with pytest.raises(ImageReadError, match="refused unread"):
        read_rgb(sparse, max_pixels=1000)
    name = os.fsdecode(os.fsencode(tmp_path) + b"/\xff.jpg")
    with pytest.raises(ImageReadError) as info:
        read_rgb(name)
    assert "\\xff.jpg: file not found" in str(info.value)
    str(info.value).encode("utf-8")


# --- the compliance report's gallery -----------------------------------------------------

def _gallery_db(db_url: str, inbox: Path, outside: Path) -> tuple[object, dict[str, str]]:
    """Face rows whose frames are: fine, replaced by a FIFO or a socket, links leaving the inbox
    or looping, malformed, missing, or stored with a path outside the inbox. Returns the engine
    and stored path -> expected placeholder ('' for a real crop)."""
    from maskjob.storage.database import session

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    cam = inbox / "cam-a"
    cam.mkdir(parents=True)
    outside.mkdir()
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cases: dict[str, str] = {}

    def add(i: int, placeholder: str) -> Path:
        cases[f"cam-a/{T(i)}.jpg"] = placeholder
        return cam / f"{T(i)}.jpg"

    Image.fromarray(frame).save(add(0, ""))
    os.mkfifo(add(1, "frame refused"))  # scored, then replaced by a FIFO
    _bind_socket(add(2, "frame refused"))
    Image.fromarray(frame).save(outside / "secret.jpg")
    add(3, "frame refused").symlink_to(outside / "secret.jpg")
    os.mkfifo(outside / "pipe")
    add(4, "frame refused").symlink_to(outside / "pipe")
    add(5, "frame refused").symlink_to(f"{T(5)}.jpg")
    add(6, "frame unreadable").write_bytes(_mutated("SPIDER", "F", 107, 127))
    add(7, "frame unreadable").write_bytes(b"not a picture")
    add(8, "frame file missing")
    cases["../outside/secret.jpg"] = "frame refused"
    with session(engine) as s:
        model = schema.ModelVersion(version="cnn-0001", arch="cnn", checkpoint_path="/models/cnn.pt",
                                    checkpoint_sha256="c" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                                    created_at=datetime(2026, 11, 20), status="champion")
        s.add(model)
        s.flush()
        for n, rel in enumerate(cases):
            image = schema.Image(path=rel, camera_id="cam-a", captured_at=datetime(2026, 11, 24, 13, 0, n),
                                 width=320, height=240, status="ok", reason=None, n_faces=1,
                                 model_version_id=model.id, scored_at=datetime(2026, 11, 25))
            image.faces.append(schema.Face(face_index=0, x1=100, y1=60, x2=180, y2=150, detector_score=0.99,
                                           label="without_mask", p_with_mask=0.05, p_without_mask=0.9,
                                           p_partial_mask=0.05, confidence=0.9 - n / 100, model_version_id=model.id))
            s.add(image)
    return engine, cases


@pytest.mark.timeout(90, func_only=True)
def test_report_gallery_shows_placeholders_and_never_leaves_the_inbox(db_url, settings_factory, tmp_path, caplog):
    from maskjob.reporting import compliance
    from maskjob.reporting.compliance import render_compliance_report

    inbox = tmp_path / "inbox"
    engine, cases = _gallery_db(db_url, inbox, tmp_path / "outside")
    settings = settings_factory(inbox_dir=inbox, gallery_cap=50, review_threshold=0.1, blur_faces=True)
    try:
        with caplog.at_level(logging.WARNING, logger="maskjob.reporting.compliance"):
            path = render_compliance_report(engine, settings, datetime(2026, 11, 24).date(),
                                            datetime(2026, 11, 24).date(), out_dir=tmp_path / "out")
    finally:
        engine.dispose()
    html = path.read_text(encoding="utf-8")
    uris = {text: compliance._placeholder_uri(text) for text in ("frame refused", "frame unreadable",
                                                                  "frame file missing")}
    assert len(set(uris.values())) == 3
    expected = {text: sum(v == text for v in cases.values()) for text in uris}
    for text, uri in uris.items():
        assert html.count(f'src="{uri}"') == expected[text], text
    assert html.count('src="data:image/jpeg;base64,') == 1  # the one real crop
    assert html.count("(frame file missing)") == 1
    assert str(tmp_path) not in html and "outside/" not in html
    assert "refused for safety" in caplog.text and "named pipe" in caplog.text
