"""Where maskjob's data files are: the report templates, the Alembic migrations, the DAG file.

They live in top-level folders of the repository (``templates/``, ``alembic/``, ``dags/``) and
the build maps them into the package (``pyproject.toml``, ``[tool.setuptools.package-dir]``)
as ``maskjob.templates``, ``maskjob.migrations`` and ``maskjob.dags``, so an installed wheel
has them under ``site-packages/maskjob/``. They are found with :mod:`importlib.resources`
(``files("maskjob") / "templates"``), never from where a checkout happens to be.

An editable install (``pip install -e .``, what ``scripts/setup.sh`` does) leaves the folders
where they are. setuptools' editable finder knows the mapping but cannot import a mapped
folder that has no ``__init__.py`` (pypa/setuptools#4943), and these folders must not get one
(an ``alembic/__init__.py`` would shadow the alembic library in every process started in the
checkout). So for an editable install, and only then (its PEP 610 ``direct_url.json`` says
``"editable": true`` and that project's ``maskjob/`` is the imported package), each folder
comes from the ``package-dir`` table of the project's ``pyproject.toml``: the same table the
wheel is built from.

Example:
    >>> templates_dir()                    # doctest: +SKIP
    PosixPath('/srv/venv/lib/python3.11/site-packages/maskjob/templates')
"""

from __future__ import annotations

import functools
import json
import tomllib
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from maskjob.errors import MaskjobError

__all__ = [
    "DAGS_PACKAGE", "DAG_FILE_NAME", "MIGRATIONS_PACKAGE", "TEMPLATES_PACKAGE",
    "dag_file", "dags_dir", "data_dir", "migrations_dir", "templates_dir",
]

DISTRIBUTION = "maskjob"
TEMPLATES_PACKAGE = "maskjob.templates"  # templates/: Jinja2 HTML of both reports
MIGRATIONS_PACKAGE = "maskjob.migrations"  # alembic/: env.py, script.py.mako, versions/*.py
DAGS_PACKAGE = "maskjob.dags"  # dags/: the Airflow DAG file, a thin wrapper of maskjob.dag
DAG_FILE_NAME = "mask_compliance.py"


def templates_dir() -> Path:
    """The Jinja2 templates folder (``templates/`` in the repository)."""
    return data_dir(TEMPLATES_PACKAGE)


def migrations_dir() -> Path:
    """The Alembic script location (``alembic/`` in the repository): ``env.py`` and ``versions/``."""
    return data_dir(MIGRATIONS_PACKAGE)


def dags_dir() -> Path:
    """A folder holding only the Airflow DAG file: a dags folder or LocalDagBundle path for Airflow."""
    return data_dir(DAGS_PACKAGE)


def dag_file() -> Path:
    """The Airflow DAG file (``dags/mask_compliance.py`` in the repository)."""
    path = dags_dir() / DAG_FILE_NAME
    if not path.is_file():
        raise MaskjobError(f"the DAG file {path} is missing. {_REINSTALL}")
    return path


_REINSTALL = "Reinstall maskjob: `pip install maskjob-<version>.whl`, or `scripts/setup.sh` in a checkout."


@functools.cache
def data_dir(package: str) -> Path:
    """The folder of one of maskjob's data packages (``maskjob.templates``, ...), as a real path.

    Raises:
        MaskjobError: the installed maskjob has no such folder.
    """
    parent, _, name = package.rpartition(".")
    if parent != DISTRIBUTION or not name:
        raise ValueError(f"not a maskjob data package: {package!r}")
    code = resources.files(DISTRIBUTION)
    installed = code / name  # where a wheel puts it
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    editable = _editable_folder(package, code)
    if editable is not None and editable.is_dir():
        return editable
    raise MaskjobError(f"maskjob's package data {package} is missing (not at {installed}). {_REINSTALL}")


def _editable_projects() -> list[Path]:
    """Source trees of editable installs of maskjob, as their PEP 610 ``direct_url.json`` records them."""
    projects = []
    # A checkout on sys.path also shows its maskjob.egg-info (no direct_url.json): look at them all.
    for dist in metadata.distributions(name=DISTRIBUTION):
        try:
            info = json.loads(dist.read_text("direct_url.json") or "{}")
        except json.JSONDecodeError:
            continue
        url = urlparse(str(info.get("url", "")))
        if info.get("dir_info", {}).get("editable") and url.scheme == "file":
            projects.append(Path(unquote(url.path)))
    return projects


def _editable_folder(package: str, code: object) -> Path | None:
    """The folder that the editable project's ``[tool.setuptools.package-dir]`` maps ``package``
    to, from the project whose ``maskjob/`` is the imported package (``code``): a wheel's venv
    that can also see an editable install elsewhere never takes that checkout's files."""
    for project in _editable_projects():
        try:
            config = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        package_dir = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
        own_code = project / package_dir.get(DISTRIBUTION, Path(package_dir.get("", ".")) / DISTRIBUTION)
        folder = package_dir.get(package)
        if folder and isinstance(code, Path) and own_code.resolve() == code.resolve():
            return project / folder
    return None
