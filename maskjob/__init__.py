"""maskjob: nightly face-mask compliance scoring.

Importing the package is cheap (no torch): the Airflow DAG imports it at parse time.
"""

__all__ = ["CLASSES", "MaskjobError", "__version__"]

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("with_mask", "without_mask", "partial_mask")

from maskjob.errors import MaskjobError  # noqa: E402
