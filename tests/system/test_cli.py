"""The ``maskjob`` command as a user runs it: the answer on stdout, warnings on stderr, library
logs only with ``-v``; ``maskjob evaluate`` on a folder of one's own; ``maskjob run``'s summary
(one line per task instance) and its log file."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from maskjob.cli import main
from maskjob.cli.console import configure_logging, restore_logging
from maskjob.storage.database import head_revision
from tests.fixtures.demo import tiny_settings
from tests.fixtures.paths import REPO_ASSETS, REPO_TORCH_HOME

# The console script pip installed (the real entry point), else the module.
_SCRIPT = Path(sys.executable).with_name("maskjob")
MASKJOB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "maskjob"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKJOB_")}
    return {**env, "MASKJOB_NUM_WORKERS": "0", **extra}


def maskjob(*argv: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MASKJOB, *argv], check=False, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\b(DEBUG|INFO)\b|\[(info|debug) ", line)]


def test_db_upgrade_and_models_print_only_their_answer(tmp_path):
    data = tmp_path / "data"
    done = maskjob("--data-dir", str(data), "db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"sqlite:///{data / 'maskjob.db'}: empty -> {head_revision()}"]
    assert done.stderr == ""

    done = maskjob("--data-dir", str(data), "models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no model versions registered; train with `maskjob train`, then `maskjob register CKPT`"]
    assert done.stderr == ""


def test_verbose_shows_library_info_logs_on_stderr(tmp_path):
    data = tmp_path / "data"
    done = maskjob("-v", "--data-dir", str(data), "db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"sqlite:///{data / 'maskjob.db'}: empty -> {head_revision()}"]
    assert "INFO alembic.runtime.migration: Running upgrade  -> 0001" in done.stderr
    assert "INFO maskjob.storage.database: database" in done.stderr
    assert "setup plugin" not in done.stderr  # Alembic's plugin chatter waits for -vv
    assert "DEBUG" not in done.stderr

    # -v also works after the command; the answer stays alone on stdout.
    done = maskjob("--data-dir", str(data), "db", "upgrade", "-v", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sqlite:///{data / 'maskjob.db'}: {head_revision()} -> {head_revision()}\n"
    assert "INFO alembic.runtime.migration" in done.stderr

    done = maskjob("--data-dir", str(data), "-vv", "db", "upgrade", cwd=tmp_path)
    assert "INFO alembic.runtime.plugins: setup plugin" in done.stderr


def test_errors_still_show_when_quiet(tmp_path):
    done = maskjob("--data-dir", str(tmp_path / "data"), "models", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("maskjob: error: database sqlite:///")
    assert "Run `maskjob db upgrade` first" in done.stderr


def test_quiet_logging_shows_warnings_not_info(capsys):
    saved = configure_logging(0)
    try:
        logging.getLogger("maskjob.test").info("progress nobody asked for")
        logging.getLogger("maskjob.test").warning("3 frames were unreadable")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    finally:
        restore_logging(saved)
    err = capsys.readouterr().err
    assert err.splitlines() == ["WARNING maskjob.test: 3 frames were unreadable"]


def test_help_documents_the_verbosity_levels(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "-v INFO" in text and "-vv DEBUG" in text


def _test_only_copy(tiny_demo: Any, dest: Path) -> Path:
    shutil.copytree(tiny_demo.root / "test", dest / "test")
    return dest


def test_evaluate_works_on_a_folder_with_only_the_test_split(tiny_checkpoints, tiny_demo, tmp_path, capsys):
    import json

    own = _test_only_copy(tiny_demo, tmp_path / "my-test-set")
    ckpt = str(tiny_checkpoints["cnn"])
    assert main(["evaluate", "--model", ckpt, "--data", str(own), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["split"] == "test"
    assert report["n_images"] == sum(tiny_demo.summary.counts["test"].values())
    assert _log_lines(captured.err) == []

    # The same numbers as on the full dataset.
    assert main(["evaluate", "--model", ckpt, "--data", str(tiny_demo.root), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert (full["accuracy"], full["macro_f1"], full["confusion_matrix"]) == (
        report["accuracy"], report["macro_f1"], report["confusion_matrix"])

    assert main(["evaluate", "--model", ckpt, "--data", str(own)]) == 0
    assert capsys.readouterr().out.startswith(f"cnn on test: {report['n_images']} images")


def test_evaluate_names_the_missing_split_and_its_layout(tiny_checkpoints, tiny_demo, tmp_path, capsys):
    own = _test_only_copy(tiny_demo, tmp_path / "my-test-set")
    ckpt = str(tiny_checkpoints["cnn"])
    assert main(["evaluate", "--model", ckpt, "--data", str(own), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert f"dataset {own} has no train/ folder" in err
    assert f"expected {own}/train/{{with_mask,without_mask,partial_mask}}/<images" in err

    # Class folders straight under the root: the message says where they belong.
    assert main(["evaluate", "--model", ckpt, "--data", str(own / "test")]) == 2
    err = capsys.readouterr().err
    assert "has no test/ folder" in err and f"move them into {own / 'test' / 'test'}/" in err


# ---- maskjob run: slow (a real DAG run in a subprocess), kept short by a ready champion ----

RUN_ENV = {
    "MASKJOB_ASSETS_DIR": str(REPO_ASSETS),
    "MASKJOB_TORCH_HOME": str(REPO_TORCH_HOME),
    "MASKJOB_MIN_MACRO_F1": "0",
    "MASKJOB_MIN_CLASS_RECALL": "0",
    "MASKJOB_TRANSFER_ARCH": "mobilenet_v2",  # the ImageNet file the offline assets provide
}
TASK_LINE = re.compile(r"^  (?P<task>[a-z_]+)(\[(?P<index>\d+)\])? (?P<state>[a-z_]+)( (?P<seconds>\d+\.\d) s)?(: .*)?$")


def _run_workspace(tmp_path: Path, tiny_demo: Any, champion: Path | None = None) -> Path:
    """A data dir with a copy of the tiny dataset and inbox; with ``champion`` registered and
    promoted, so the run skips training (it was trained on this very dataset)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_demo.root, data / "dataset")
    shutil.copytree(tiny_demo.inbox, data / "inbox")
    if champion is not None:
        from maskjob.storage import database, registry

        url = f"sqlite:///{data / 'maskjob.db'}"
        settings = tiny_settings(data, min_macro_f1=0.0, min_class_recall=0.0)
        database.upgrade(url)
        with database.database(url) as engine:
            registry.register(engine, champion)
            assert registry.promote(engine, data / "dataset", settings).promoted is not None
    return data


def _task_lines(stdout: str) -> dict[str, re.Match[str]]:
    matches = [TASK_LINE.match(line) for line in stdout.splitlines()]
    return {m["task"] + (f"[{m['index']}]" if m["index"] else ""): m for m in matches if m}


@pytest.mark.slow
def test_maskjob_run_prints_one_line_per_task_then_the_answer_and_names_its_log(tiny_demo, tiny_checkpoints,
                                                                                tmp_path):
    data = _run_workspace(tmp_path, tiny_demo, champion=tiny_checkpoints["mobilenet_v2"])
    done = maskjob("--data-dir", str(data), "run", "--epochs", "1", "--image-size", "32", "--shards", "2",
                   cwd=tmp_path, timeout=540, **RUN_ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert _log_lines(done.stdout) == [] and _log_lines(done.stderr) == [], done.stderr[-3000:]

    tasks = _task_lines(done.stdout)
    assert set(tasks) == {"export_corrections", "validate_dataset", "decide_training", "train_cnn", "train_transfer",
                          "register_and_promote", "plan_scoring", "score_shard[0]", "score_shard[1]",
                          "render_reports", "wait_for_late_uploads", "alert_compliance"}
    assert {name: m["state"] for name, m in tasks.items() if m["state"] != "success"} == {
        "train_cnn": "skipped", "train_transfer": "skipped", "register_and_promote": "skipped"}
    assert all(m["seconds"] for m in tasks.values() if m["state"] == "success")
    # Each task once, in the order they finished: the compliance alert last.
    task_rows = [i for i, line in enumerate(lines) if TASK_LINE.match(line)]
    assert len(task_rows) == 12 and task_rows == list(range(task_rows[0], task_rows[0] + 12))
    assert lines[task_rows[-1]].startswith("  alert_compliance success")

    # Then the answer: the run, the day's table, where everything is.
    assert lines[task_rows[-1] + 1].startswith("DAG run manual__") and ": success in " in lines[task_rows[-1] + 1]
    assert any(line.startswith("daily compliance for 2026-11-24") for line in lines)
    assert f"database: sqlite:///{data / 'maskjob.db'}" in lines
    report = Path(next(line for line in lines if line.startswith("compliance report: ")).split(": ", 1)[1])
    assert report.is_file()
    assert len(lines) < 30

    # The full Airflow log is in the file named at the start and at the end.
    assert lines[-1].startswith("full log: ")
    log = Path(lines[-1].split(": ", 1)[1])
    assert log.parent == data / "logs" and log.name.startswith("run_20261124_") and log.is_file()
    assert f"Airflow log: {log}" in lines[0]
    text = log.read_text(encoding="utf-8")
    assert "[DAG TEST] starting task_id=validate_dataset" in text  # Airflow's own (structlog)
    assert "skipping training: champion" in text  # maskjob's, from inside a task
    assert "Reading the config from" in text  # before Airflow's logging set-up


@pytest.mark.slow
def test_maskjob_run_shows_why_a_task_failed_and_keeps_the_log(tiny_demo, tmp_path):
    data = _run_workspace(tmp_path, tiny_demo)
    (data / "dataset" / "test" / "partial_mask" / "empty.jpg").write_bytes(b"")
    done = maskjob("--data-dir", str(data), "run", "--epochs", "1", "--image-size", "32",
                   cwd=tmp_path, timeout=300, **RUN_ENV)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    tasks = _task_lines(done.stdout)
    assert tasks["validate_dataset"]["state"] == "failed"
    assert "is broken" in tasks["validate_dataset"].group(0)
    assert "test/partial_mask/empty.jpg: empty file (0 bytes)" in done.stdout
    # The export (upstream) and the grace sensor do not depend on the dataset; everything else
    # downstream never ran.
    assert tasks["export_corrections"]["state"] == "success"
    assert tasks["wait_for_late_uploads"]["state"] == "success"
    assert {m["state"] for name, m in tasks.items()
            if name not in {"export_corrections", "validate_dataset", "wait_for_late_uploads"}} == {"upstream_failed"}
    assert "maskjob: error: the DAG run failed at validate_dataset" in done.stderr
    log = Path(done.stdout.splitlines()[-1].split("full log: ", 1)[1])
    assert log.is_file() and "empty.jpg" in log.read_text(encoding="utf-8")


# ---- the default transfer model, resnet18, needs its ImageNet file; the demo selects mobilenet_v2 ----

# Downloads go to a closed local port: the weights cannot resolve, online or not.
OFFLINE_ENV = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def _assert_clear_no_weights_error(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("maskjob: error: no pretrained weights for resnet18: resnet18-f37072fd.pth is not in the cache"
            in done.stderr)
    assert "maskjob weights install resnet18 --from FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_maskjob_run_with_the_resnet18_default_fails_before_any_set_up_without_weights(tmp_path):
    data = tmp_path / "data"
    done = maskjob("--data-dir", str(data), "run", cwd=tmp_path, MASKJOB_TORCH_HOME=str(tmp_path / "torch"),
                   **OFFLINE_ENV)
    _assert_clear_no_weights_error(done)
    assert "--transfer-arch mobilenet_v2" in done.stderr
    assert not (data / "dataset").exists() and not (data / "airflow").exists()  # no demo build, no DAG run


def test_maskjob_train_resnet18_fails_before_training_without_weights(tiny_demo, tmp_path):
    done = maskjob("train", "--arch", "resnet18", "--data", str(tiny_demo.root), "--out", str(tmp_path / "out"),
                   "--epochs", "1", cwd=tmp_path, MASKJOB_TORCH_HOME=str(tmp_path / "torch"), **OFFLINE_ENV)
    _assert_clear_no_weights_error(done)
    assert not (tmp_path / "out").exists()


def test_make_demo_selects_mobilenet_v2_whose_weights_the_offline_assets_provide():
    from maskjob.cli import build_parser
    from maskjob.ml.models import OFFLINE_ASSETS
    from tests.fixtures.paths import REPO_ROOT

    recipe = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").split("\ndemo: setup\n", 1)[1].splitlines()[0]
    argv = recipe.split("maskjob ", 1)[1].split()
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == "cmd_run" and args.transfer_arch == "mobilenet_v2"
    assert args.transfer_arch in OFFLINE_ASSETS


def test_maskjob_run_gives_each_in_process_training_every_core(tmp_path):
    from maskjob.cli.run_cmds import conf_from_settings
    from maskjob.ml.threads import budget, cpu_cores

    # dag.test() runs one task at a time: the automatic budget is every core, not a share.
    settings = tiny_settings(tmp_path, num_workers=2)
    conf = conf_from_settings(settings)
    assert conf["train_threads"] == budget(0, 2, concurrent=1, cores=cpu_cores())[0]
    assert conf["transfer_arch"] == "mobilenet_v2"
    assert conf_from_settings(tiny_settings(tmp_path, train_threads=3))["train_threads"] == 3
