"""Airflow DAG file for maskjob's nightly face-mask compliance DAG (``mask_compliance``).

The DAG is defined in the package, :mod:`maskjob.dag`; this file only builds it, afresh on
every parse, so a dags folder or a DAG bundle needs nothing but this file and an installed
maskjob. The wheel ships this same file as ``maskjob/dags/mask_compliance.py``
(``python -c "from maskjob.resources import dags_dir; print(dags_dir())"`` prints that folder,
ready to be ``AIRFLOW__CORE__DAGS_FOLDER`` or a ``LocalDagBundle`` path).
"""

from maskjob.dag import build_dag

mask_compliance = build_dag()
