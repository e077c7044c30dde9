"""Suite-wide set-up. Area fixtures live in tests/fixtures/ and are loaded as plugins."""

import os
import tempfile
from pathlib import Path

# Airflow reads these at import time: set them before any test imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="maskjob-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("MASKJOB_NUM_WORKERS", "0")

pytest_plugins = [
    "tests.fixtures.paths",
    "tests.fixtures.postgres",
    "tests.fixtures.demo",
    "tests.fixtures.models",
    "tests.fixtures.smtp",
    "tests.fixtures.streams",
    "tests.fixtures.celery_site",
]
