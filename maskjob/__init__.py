"""maskjob: nightly face-mask compliance scoring.

Importing the package is cheap (no torch): the Airflow DAG imports it at parse time.
"""

__all__ = ["CLASSES", "MaskjobError", "__version__"]

__version__ = "0.1.0"

from maskjob.errors import MaskjobError  # noqa: E402
from maskjob.vocab import CLASSES  # noqa: E402
