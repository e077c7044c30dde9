"""The wheel is the product: it carries the templates, the migrations and the DAG file, and the
job runs from an installed wheel with no checkout in sight.

The slow tests build the wheel from a copy of the sources, install it (without dependencies)
into a fresh venv whose site-packages reach this venv's locked packages through a ``.pth``
line (the packages are not installed again; the ``.pth`` files in that folder, the editable
maskjob's finder among them, are not processed), and run ``maskjob`` from a working directory
outside the repository: ``db upgrade``, ``demo-data``, ``train``, ``register``, ``promote``,
``score``, ``report`` (both kinds), and a DagBag load of the DAG file in the venv's
site-packages. The fast tests check the locks and the package list.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from maskjob import resources
from tests.fixtures.paths import REPO_ASSETS, REPO_ROOT, REPO_TORCH_HOME
from tests.fixtures.wheel import build_wheel, make_venv
from tests.fixtures.wheel import run as _run

# What the build reads: the package, the folders mapped into it, and the project metadata.
# Mapped data packages: (package, repository folder, files the wheel must hold from it).
DATA_PACKAGES = (
    ("maskjob.templates", "templates", ("*.html", "review/*.html")),
    ("maskjob.migrations", "alembic", ("env.py", "script.py.mako", "versions/*.py")),
    ("maskjob.dags", "dags", ("mask_compliance.py",)),
)
DAY = "2026-11-24"  # maskjob.demo.builder.DEMO_DAY: the demo inbox's frames are captured then
TEST_ONLY = {"aiosmtpd", "atpublic", "iniconfig", "playwright", "pytest", "pytest-timeout"}


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``{normalised name: (version, hashes)}`` of a requirements/*.lock file."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in (REPO_ROOT / "requirements" / name).read_text().splitlines():
        # ``name[extra,...]==version``: make lock keeps extras (pip 25 needs them for hash checking).
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            current = re.sub(r"[-_.]+", "-", match[1]).lower()
            entries[current] = (match[2], set())
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            assert current is not None, line
            entries[current][1].add(digest)
    return {k: (v, frozenset(h)) for k, (v, h) in entries.items()}


def test_the_package_list_and_the_data_mapping_cover_the_source_tree():
    setuptools = _pyproject()["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "maskjob").rglob("__init__.py")}
    data = {package for package, _, _ in DATA_PACKAGES} | {"maskjob.migrations.versions"}
    # A new subpackage of maskjob/ must be listed: package-dir mapping rules out packages.find.
    assert set(setuptools["packages"]) == code | data
    assert setuptools["package-dir"] == {package: folder for package, folder, _ in DATA_PACKAGES}
    assert {resources.TEMPLATES_PACKAGE, resources.MIGRATIONS_PACKAGE, resources.DAGS_PACKAGE} == set(
        setuptools["package-dir"])
    # No __init__.py in the mapped folders: alembic/__init__.py would shadow the alembic library.
    assert not any((REPO_ROOT / folder / "__init__.py").exists() for _, folder, _ in DATA_PACKAGES)


def test_editable_install_finds_the_repository_folders_and_a_missing_one_is_a_clear_error():
    from maskjob.errors import MaskjobError

    # This suite runs on the editable install scripts/setup.sh makes: the mapping points here.
    assert resources.templates_dir() == REPO_ROOT / "templates"
    assert resources.migrations_dir() == REPO_ROOT / "alembic"
    assert resources.dag_file() == REPO_ROOT / "dags" / "mask_compliance.py"
    with pytest.raises(MaskjobError, match="maskjob.nothing is missing.*Reinstall maskjob"):
        resources.data_dir("maskjob.nothing")


def test_locks_pin_everything_with_hashes_and_test_lock_only_adds_test_tools():
    runtime, test = _lock("runtime.lock"), _lock("test.lock")
    assert all(hashes for _, hashes in runtime.values()) and all(hashes for _, hashes in test.values())
    assert runtime["torch"][0] == "2.14.1" and runtime["torchvision"][0] == "0.29.1"
    # The CUDA build of torch cannot be imported without these (libcudnn.so.9 & co.): they stay.
    assert {"nvidia-cudnn-cu13", "nvidia-cublas", "triton"} <= set(runtime)
    assert {name: test[name] for name in runtime} == runtime  # same pins and hashes
    assert set(test) - set(runtime) == TEST_ONLY
    assert not TEST_ONLY & set(runtime) and "facenet-pytorch" not in test
    declared = {re.split(r"[<>=\[ ;]", r)[0].lower() for r in _pyproject()["project"]["dependencies"]}
    assert declared <= set(runtime)


def test_facenet_is_test_only_and_pinned_to_the_wheel_the_assets_use():
    from maskjob.assets import SOURCES

    nodeps = _lock("test-nodeps.lock")
    source = SOURCES["facenet-pytorch"]
    assert nodeps == {"facenet-pytorch": (source.version, frozenset({source.sha256}))}
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "--no-deps --require-hashes -r requirements/test-nodeps.lock" in setup


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (setuptools never prunes build/ in a tree)."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_mapped_folders(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"maskjob/" + p.relative_to(REPO_ROOT / "maskjob").as_posix()
                for p in (REPO_ROOT / "maskjob").rglob("*.py")}
    for package, folder, patterns in DATA_PACKAGES:
        prefix = package.replace(".", "/")
        for pattern in patterns:
            files = sorted((REPO_ROOT / folder).glob(pattern))
            assert files, f"{folder}/{pattern} matches nothing"
            expected |= {f"{prefix}/{f.relative_to(REPO_ROOT / folder).as_posix()}" for f in files}
    assert expected <= names, sorted(expected - names)
    assert all(n.startswith(("maskjob/", "maskjob-0")) for n in names), sorted(names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "Requires-Dist: torch==2.14.1" in requires
    assert not any("facenet" in line for line in requires)
    assert all("extra ==" in line for line in requires if "pytest" in line or "playwright" in line)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A venv with the wheel and nothing else of its own; the locked packages come from this venv."""
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    site = make_venv(wheel, venv)
    python = venv / "bin" / "python"
    home = work / "home"  # the working directory: no checkout, data lands in ./data
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith(("MASKJOB_", "AIRFLOW"))}
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONSAFEPATH": "1",  # `python -c` must not put the working directory on sys.path either
        # Airflow reads these at import time, in every subprocess.
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # Reuse the fetched assets and weights; let a 1-epoch model pass the promotion bars.
        "MASKJOB_ASSETS_DIR": str(REPO_ASSETS),
        "MASKJOB_TORCH_HOME": str(REPO_TORCH_HOME),
        "MASKJOB_NUM_WORKERS": "0",
        "MASKJOB_MIN_MACRO_F1": "0",
        "MASKJOB_MIN_CLASS_RECALL": "0",
    })
    return {"venv": venv, "python": python, "site": site, "home": home, "env": env}


@pytest.mark.slow
def test_installed_maskjob_is_the_wheel_with_its_data_and_dag(installed: dict):
    probe = (
        "import json, sys\n"
        "import maskjob\n"
        "from maskjob import resources\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(installed['site'] / 'maskjob' / 'dags' / 'mask_compliance.py')!r})\n"
        "dag = bag.dags.get('mask_compliance')\n"
        "print(json.dumps({'maskjob': maskjob.__file__, 'templates': str(resources.templates_dir()),\n"
        "    'migrations': str(resources.migrations_dir()), 'dags': str(resources.dags_dir()),\n"
        "    'errors': bag.import_errors, 'dag_ids': sorted(bag.dags), 'fileloc': dag and dag.fileloc,\n"
        "    'tasks': dag and len(dag.tasks),\n"
        "    'heavy': sorted(m for m in ('torch', 'maskjob.pipeline') if m in sys.modules)}))\n"
    )
    result = json.loads(_run([str(installed["python"]), "-c", probe], cwd=installed["home"],
                             env=installed["env"]).strip().splitlines()[-1])
    site = installed["site"]
    assert Path(result["maskjob"]).is_relative_to(site), result["maskjob"]
    assert not Path(result["maskjob"]).is_relative_to(REPO_ROOT)
    for key, folder in (("templates", "templates"), ("migrations", "migrations"), ("dags", "dags")):
        assert result[key] == str(site / "maskjob" / folder)
    assert result["errors"] == {} and result["dag_ids"] == ["mask_compliance"]
    assert result["fileloc"] == str(site / "maskjob" / "dags" / "mask_compliance.py")
    assert result["tasks"] == 11 and result["heavy"] == []  # as tests/system/test_dag.py lists them
    # The console script runs the venv's interpreter.
    assert (installed["venv"] / "bin" / "maskjob").read_text().splitlines()[0] == f"#!{installed['python']}"


@pytest.mark.slow
def test_the_job_runs_from_the_installed_wheel(installed: dict):
    home, env = installed["home"], installed["env"]

    def maskjob(*args: str) -> str:
        return _run(["maskjob", *args], cwd=home, env=env)

    maskjob("db", "upgrade")
    assert "(head)" in maskjob("db", "current")
    maskjob("demo-data", "--scale", "0.1")
    data = home / "data"
    assert (data / "dataset" / "train").is_dir() and any((data / "inbox").glob("*/*.jpg"))
    maskjob("train", "--arch", "cnn", "--epochs", "1", "--image-size", "32")
    checkpoint = data / "models" / "cnn.pt"
    assert checkpoint.is_file()
    maskjob("register", str(checkpoint))
    maskjob("promote")
    summary = json.loads(maskjob("score", "--since", DAY, "--until", "2026-11-25", "--json"))
    assert summary["n_frames"] > 0, summary
    compliance = Path(maskjob("report", "--from", DAY).strip().splitlines()[-1])
    model = Path(maskjob("report", "model").strip().splitlines()[-1])
    for page in (compliance, model):
        assert page.is_file() and page.is_relative_to(data / "reports"), page
        assert "<html" in page.read_text(encoding="utf-8").lower()
