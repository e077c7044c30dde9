"""Bad frames never stop a run and are never lost: each gets an ``unreadable`` row with a
reason, while odd but valid images (alpha, 16-bit, grey, CMYK, EXIF-rotated) are scored."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from maskjob.config import replace
from maskjob.scoring import score as score_module
from maskjob.scoring.frames import decode_frame, discover_frames
from maskjob.scoring.score import score
from maskjob.storage import database, schema
from tests.scoring.test_score import TEST_DETECTOR, copy_inbox, failing_detector, score_settings, use_champion

REPO = Path(__file__).resolve().parents[2]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` but carries almost no data (a pixel bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def make_bad_inbox(inbox: Path, face_frame: Path, outside_dir: Path) -> dict[str, str | None]:
    """Write one file per bad-input kind; returns rel path -> expected reason pattern (None: readable)."""
    cam = inbox / "cam-bad"
    cam.mkdir(parents=True, exist_ok=True)
    face = np.asarray(Image.open(face_frame).convert("RGB"))
    expected: dict[str, str | None] = {}

    def name(i: int) -> str:
        return f"20261124T1200{i:02d}"

    (cam / f"{name(0)}.jpg").write_bytes(b"")
    expected[f"cam-bad/{name(0)}.jpg"] = "empty file"
    data = face_frame.read_bytes()
    (cam / f"{name(1)}.jpg").write_bytes(data[: len(data) // 3])
    expected[f"cam-bad/{name(1)}.jpg"] = "truncated"
    (cam / f"{name(2)}.jpg").write_text("this is not a picture\n")
    expected[f"cam-bad/{name(2)}.jpg"] = "not a recognised image"
    _png_header_only(cam / f"{name(3)}.png", 100_000, 100_000)
    expected[f"cam-bad/{name(3)}.png"] = "decompression bomb"
    denied = cam / f"{name(4)}.jpg"
    shutil.copyfile(face_frame, denied)
    denied.chmod(0)
    expected[f"cam-bad/{name(4)}.jpg"] = "permission denied"
    outside = outside_dir / "elsewhere.jpg"
    shutil.copyfile(face_frame, outside)
    (cam / f"{name(5)}.jpg").symlink_to(outside)
    expected[f"cam-bad/{name(5)}.jpg"] = "symlink points outside the inbox"

    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(cam / f"{name(10)}.png")
    grey16 = (face.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(cam / f"{name(11)}.png")  # 16-bit grey PNG ("I;16")
    Image.fromarray(face).convert("L").save(cam / f"{name(12)}.jpg")
    Image.fromarray(face).convert("CMYK").save(cam / f"{name(13)}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display upright
    Image.fromarray(np.ascontiguousarray(np.rot90(face, 1))).save(cam / f"{name(14)}.jpg", exif=exif)
    for i in range(10, 15):
        ext = "png" if i < 12 else "jpg"
        expected[f"cam-bad/{name(i)}.{ext}"] = None
    return expected


@pytest.fixture
def bad_inbox(tmp_path, tiny_demo):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    (tmp_path / "outside").mkdir()
    face_frame = max(discover_frames(inbox), key=lambda f: f.path.stat().st_size).path
    return inbox, make_bad_inbox(inbox, face_frame, tmp_path / "outside")


def test_decode_frame_reasons(bad_inbox):
    inbox, expected = bad_inbox
    frames = {f.rel_path: f for f in discover_frames(inbox)}
    for rel, pattern in expected.items():
        if "permission" in (pattern or ""):
            continue  # root reads any file; the subprocess test below drops that privilege
        decoded = decode_frame(frames[rel], inbox.resolve(), 40_000_000)
        if pattern is None:
            assert decoded.reason is None and decoded.content_sha256, (rel, decoded.reason)
            assert decoded.rgb.shape == (480, 640, 3) and decoded.rgb.dtype == np.uint8
        else:
            assert decoded.rgb is None and pattern in decoded.reason, (rel, decoded.reason)


def test_exif_rotated_and_alpha_frames_are_read_upright(bad_inbox):
    inbox, _ = bad_inbox
    frames = {f.rel_path: f for f in discover_frames(inbox)}
    rotated = decode_frame(frames["cam-bad/20261124T120014.jpg"], inbox.resolve(), 40_000_000).rgb
    alpha = decode_frame(frames["cam-bad/20261124T120010.png"], inbox.resolve(), 40_000_000).rgb
    assert rotated.shape == (480, 640, 3)
    assert alpha.shape == (480, 640, 3) and (alpha[:40, :40] == 255).all()  # transparent -> white


def test_a_run_with_every_bad_kind_records_each_and_finishes(bad_inbox, tiny_checkpoints, tmp_path):
    """Run the real command with root's file-permission override dropped, so the chmod 000
    frame is genuinely unreadable (tests run as root, which otherwise reads any file)."""
    inbox, expected = bad_inbox
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    env = {**os.environ, "MASKJOB_DATABASE_URL": url, "MASKJOB_DETECTOR": TEST_DETECTOR,
           "MASKJOB_ASSETS_DIR": str(REPO / "data" / "assets"), "MASKJOB_SCORE_BATCH_FRAMES": "4"}
    cmd = [sys.executable, "-m", "maskjob", "--data-dir", str(tmp_path / "data"), "score", "--inbox", str(inbox)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    engine = database.make_engine(url)
    with engine.connect() as conn:
        rows = {r.path: r for r in conn.execute(sa.select(schema.Image))}
        run = conn.execute(sa.select(schema.ScoringRun)).one()
    engine.dispose()
    frames = discover_frames(inbox)
    assert sorted(rows) == sorted(f.rel_path for f in frames)
    for rel, pattern in expected.items():
        row = rows[rel]
        if pattern is None:
            assert row.status in {"ok", "no_face"} and row.reason is None, (rel, row.reason)
            assert (row.width, row.height) == (640, 480)
        else:
            assert row.status == "unreadable" and pattern in row.reason, (rel, row.reason)
            assert row.n_faces == 0 and row.width is None
    n_bad = sum(p is not None for p in expected.values())
    assert (run.status, run.n_frames, run.n_unreadable) == ("succeeded", len(frames), n_bad)
    assert f"{n_bad} unreadable" in proc.stdout and "permission denied" in proc.stdout
    # The odd-but-valid variants of a frame with faces are scored like it.
    assert all(rows[rel].n_faces > 0 for rel, p in expected.items() if p is None)


def test_a_frame_that_vanishes_after_listing_is_recorded(tmp_path, tiny_demo, tiny_checkpoints, monkeypatch):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    gone = discover_frames(inbox)[3]
    real_discover = score_module.discover_frames

    def discover_then_delete(*args, **kwargs):
        frames = real_discover(*args, **kwargs)
        gone.path.unlink()
        return frames

    monkeypatch.setattr(score_module, "discover_frames", discover_then_delete)
    url = f"sqlite:///{tmp_path / 'vanish.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    engine = database.make_engine(url)
    summary = score(engine, score_settings(tiny_demo.settings), inbox)
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.Image).where(schema.Image.path == gone.rel_path)).one()
        n_images = conn.scalar(sa.select(sa.func.count()).select_from(schema.Image))
    engine.dispose()
    assert row.status == "unreadable" and "vanished" in row.reason
    assert summary.n_unreadable == 1 and summary.unreadable == [(gone.rel_path, row.reason)]
    assert n_images == len(discover_frames(tiny_demo.inbox))


def test_unreadable_frames_are_kept_until_a_run_retries_them(tmp_path, tiny_demo, tiny_checkpoints):
    """A frame caught mid-upload stays ``unreadable`` on plain reruns (nothing is rescored) and
    is read again, its row replaced, by ``retry_unreadable`` once the file is whole."""
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    frames = discover_frames(inbox)
    late = frames[2]
    whole = late.path.read_bytes()
    late.path.write_bytes(whole[: len(whole) // 4])
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    engine = database.make_engine(url)
    settings = score_settings(tiny_demo.settings)

    def rows() -> dict[str, tuple]:
        with engine.connect() as conn:
            return {r.path: (r.id, r.status, r.reason, r.n_faces) for r in conn.execute(sa.select(schema.Image))}

    first = score(engine, settings, inbox)
    assert first.n_unreadable == 1 and rows()[late.rel_path][1] == "unreadable"
    late.path.write_bytes(whole)  # the upload finished
    before = rows()
    again = score(engine, settings, inbox)
    assert (again.n_frames, again.n_skipped) == (0, len(frames)) and rows() == before
    retried = score(engine, replace(settings, retry_unreadable=True), inbox)
    after = rows()
    engine.dispose()
    assert (retried.n_frames, retried.n_unreadable, retried.n_skipped) == (1, 0, len(frames) - 1)
    assert after[late.rel_path][1] == "ok" and after[late.rel_path][2] is None and after[late.rel_path][3] > 0
    assert {p: r for p, r in after.items() if p != late.rel_path} == {
        p: r for p, r in before.items() if p != late.rel_path}
    with database.make_engine(url).connect() as conn:
        n_faces = conn.scalar(sa.select(sa.func.count()).select_from(schema.Face))
    assert n_faces == sum(r[3] for r in after.values())


def test_cli_retry_unreadable_flag_reaches_the_scorer(tmp_path, tiny_demo, tiny_checkpoints):
    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    (inbox / "cam-x").mkdir()
    (inbox / "cam-x" / "20261124T120000.jpg").write_bytes(b"")
    n_frames = len(discover_frames(inbox))
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    env = {**os.environ, "MASKJOB_DATABASE_URL": url, "MASKJOB_DETECTOR": TEST_DETECTOR,
           "MASKJOB_ASSETS_DIR": str(REPO / "data" / "assets")}
    cmd = [sys.executable, "-m", "maskjob", "--data-dir", str(tmp_path / "data"), "score", "--inbox", str(inbox), "--json"]
    runs = [json.loads(_ok(subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)))
            for argv in (cmd, cmd, [*cmd, "--retry-unreadable"])]
    assert [(r["n_frames"], r["n_unreadable"], r["n_skipped"]) for r in runs] == [
        (n_frames, 1, 0), (0, 0, n_frames), (1, 1, n_frames - 1)]
    assert runs[2]["unreadable"][0]["path"] == "cam-x/20261124T120000.jpg"


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_frame_the_models_fail_on_is_recorded_and_the_rest_scored(tmp_path, tiny_demo, tiny_checkpoints):
    """Fault injection: the real detector, made to raise on one frame size. The batch is
    retried frame by frame; that frame gets an ``unreadable`` row naming the failure."""
    from maskjob.scoring.detectors import create_detector

    inbox = copy_inbox(tiny_demo.inbox, tmp_path / "inbox")
    odd = inbox / "cam-odd" / "20261124T120000.png"
    odd.parent.mkdir()
    Image.new("RGB", (321, 123), "grey").save(odd)
    settings = score_settings(tiny_demo.settings, score_batch_frames=4)
    failing = failing_detector(create_detector(settings.detector, settings), (123, 321), "cannot handle 321x123")

    def run(name: str, faulty: bool) -> tuple:
        url = f"sqlite:///{tmp_path / name}"
        use_champion(url, tiny_checkpoints["cnn"])
        engine = database.make_engine(url)
        with pytest.MonkeyPatch.context() as mp:
            if faulty:
                mp.setattr(score_module, "create_detector", lambda name, s: failing)
            summary = score(engine, settings, inbox)
        with engine.connect() as conn:
            rows = {r.path: (r.status, r.reason, r.width, r.height, r.n_faces) for r in conn.execute(sa.select(schema.Image))}
        engine.dispose()
        return summary, rows

    summary, rows = run("fault.db", faulty=True)
    clean_summary, clean_rows = run("clean.db", faulty=False)
    status, reason, width, height, _ = rows.pop("cam-odd/20261124T120000.png")
    assert status == "unreadable" and "RuntimeError: cannot handle 321x123" in reason
    assert (width, height) == (321, 123)
    assert summary.n_unreadable == 1 and summary.n_frames == clean_summary.n_frames
    # Every other frame, the ones batched with the odd one included, is scored as without the fault.
    clean_rows.pop("cam-odd/20261124T120000.png")
    assert rows == clean_rows and summary.n_faces == clean_summary.n_faces > 0


def test_a_frame_smaller_than_any_face_is_no_face(tmp_path, tiny_demo, tiny_checkpoints):
    inbox = tmp_path / "inbox"
    (inbox / "cam-tiny").mkdir(parents=True)
    Image.new("RGB", (10, 10), "white").save(inbox / "cam-tiny" / "20261124T120000.png")
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    use_champion(url, tiny_checkpoints["cnn"])
    engine = database.make_engine(url)
    summary = score(engine, score_settings(tiny_demo.settings), inbox)
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(schema.Image)).all()
    engine.dispose()
    assert (summary.n_frames, summary.n_no_face, row.status) == (1, 1, "no_face")
