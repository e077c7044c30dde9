"""The README prints the analysts' example queries exactly as the code tests and times them."""

from __future__ import annotations

import re

from maskjob.storage.analyst_queries import QUERIES
from tests.fixtures.paths import REPO_ROOT


def _sql_blocks() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return "\n".join(re.findall(r"```sql\n(.*?)```", readme, flags=re.S))


def test_every_example_query_appears_verbatim_under_its_title():
    blocks = _sql_blocks()
    for title, sql in QUERIES.items():
        assert f"-- {title}\n{sql}\n" in blocks, f"README lacks the query {title!r} as analyst_queries.py has it"


def test_week_queries_cover_the_same_week():
    bounded = [sql for title, sql in QUERIES.items() if "over a week" in title]
    assert len(bounded) == 5
    for sql in bounded:
        assert "'2026-11-18'" in sql and "'2026-11-25'" in sql
