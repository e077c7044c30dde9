"""User-caused failures on the command line: a clear message, exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from maskjob.errors import MaskjobError
from maskjob.imageio import output_dir, write_text
from maskjob.ml.checkpoint import save_checkpoint
from tests.fixtures.paths import REPO_ASSETS, REPO_TORCH_HOME
from tests.system.test_cli import maskjob

ASSET_ENV = {"MASKJOB_ASSETS_DIR": str(REPO_ASSETS), "MASKJOB_TORCH_HOME": str(REPO_TORCH_HOME)}


def _clean_error(done: Any, *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert maskjob("--data-dir", str(data), "db", "upgrade", cwd=tmp_path).returncode == 0
    return data


@pytest.mark.parametrize("argv, needle", [
    (["run", "--date", "9999-12-31"], "year 9999 is outside 1900-2999"),
    (["run", "--date", "0001-01-01"], "year 1 is outside"),
    (["score", "--since", "0001-01-01T00:00+05:00"], "year 1 is outside"),
    (["score", "--until", "9999-12-31T23:59:59"], "year 9999 is outside"),
    (["report", "--from", "9999-12-31"], "year 9999 is outside"),
])
def test_extreme_dates_are_refused_by_name(tmp_path, argv, needle):
    _clean_error(maskjob("--data-dir", str(tmp_path / "d"), *argv, cwd=tmp_path), needle)


def test_report_out_that_is_a_file_or_unwritable(migrated, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    done = maskjob("--data-dir", str(migrated), "report", "--from", "2026-11-24", "--out", str(a_file), cwd=tmp_path)
    _clean_error(done, "is not a folder")
    done = maskjob("--data-dir", str(migrated), "report", "--from", "2026-11-24", "--out", str(a_file / "sub"),
                   cwd=tmp_path)
    _clean_error(done, "cannot create report folder")
    done = maskjob("--data-dir", str(migrated), "report", "--from", "2026-11-24", "--out", "/proc/maskjob-reports",
                   cwd=tmp_path)
    _clean_error(done, "cannot create report folder /proc/maskjob-reports")


def test_predict_annotate_into_a_file_is_a_clear_error(tiny_checkpoints, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    photo = REPO_ASSETS / "insightface" / "t1.jpg"
    done = maskjob("--data-dir", str(tmp_path / "d"), "predict", str(photo), "--model", str(tiny_checkpoints["cnn"]),
                   "--annotate", str(a_file), cwd=tmp_path, **ASSET_ENV)
    _clean_error(done, "--annotate folder", "is not a folder")


def test_config_that_is_a_directory(tmp_path):
    _clean_error(maskjob("--config", str(tmp_path), "models", cwd=tmp_path), str(tmp_path))


def test_library_helpers_turn_os_errors_into_maskjob_errors(tmp_path, monkeypatch):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(MaskjobError, match="checkpoint folder .* is not a folder"):
        save_checkpoint(a_file / "cnn.pt", {"w": torch.zeros(1)}, {})
    assert output_dir(tmp_path / "new" / "deep", "x") == tmp_path / "new" / "deep"

    def disk_full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(MaskjobError, match="cannot write report .*No space left on device"):
        write_text(tmp_path / "r.html", "<p>", "report")
