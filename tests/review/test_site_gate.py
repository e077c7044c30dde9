"""The promotion gate on the site split: ranks on test_site once every class has enough faces,
says why not otherwise (scoring it all the same), and stores per-split metrics; pure rules plus
both databases."""

from __future__ import annotations

import pytest

from maskjob import CLASSES
from maskjob.config import load_settings
from maskjob.storage import database
from maskjob.storage.registry import Scored, SplitScore, decide, list_versions, promote, split_shortfall
from maskjob.vocab import SITE_TEST_SPLIT
from tests.storage.test_registry import FakeEvaluator, fill_split, make_ckpt, metrics

SETTINGS = load_settings(overrides={"promotion_margin": 0.005, "min_macro_f1": 0.80, "min_class_recall": 0.5,
                                    "site_split_min_per_class": 20}, environ={})
ENOUGH = {c: 25 for c in CLASSES}
SITE = {SITE_TEST_SPLIT: ENOUGH}


def scored(vid: int, test: float, site: float | None = None, *, problem: str | None = None,
           finite: bool = True) -> Scored:
    splits = {} if site is None and problem is None else {SITE_TEST_SPLIT: SplitScore(site, finite, problem)}
    return Scored(vid, f"v{vid}", test, {c: 0.9 for c in CLASSES}, splits=splits)


def test_site_split_ranks_when_every_class_is_big_enough():
    # Better on test, worse on the site: the site decides.
    out = decide([scored(2, 0.97, 0.80), scored(3, 0.90, 0.91)], scored(1, 0.96, 0.85), SETTINGS,
                 split_counts=SITE)
    by = {d.version: d for d in out}
    assert by["v3"].status == "champion" and by["v2"].status == "rejected" and by["v1"].status == "retired"
    assert by["v3"].ranked_on == SITE_TEST_SPLIT and by["v3"].split_macro_f1[SITE_TEST_SPLIT] == pytest.approx(0.91)
    assert by["v3"].reason.startswith("test_site macro-F1 0.9100 beats champion v1 (0.8500)")
    assert "(test 0.9000 vs 0.9600)" in by["v3"].reason
    assert "test_site macro-F1 0.8000 vs 0.9100" in by["v2"].reason
    assert by["v3"].macro_f1 == pytest.approx(0.90)  # the stored figure stays the test split's


def test_site_split_within_the_margin_keeps_the_champion():
    out = decide([scored(2, 0.99, 0.853)], scored(1, 0.90, 0.85), SETTINGS, split_counts=SITE)
    assert [(d.status, d.ranked_on) for d in out] == [("rejected", SITE_TEST_SPLIT)]
    assert "test_site macro-F1 0.8530 does not beat champion v1 (0.8500)" in out[0].reason


def test_no_champion_yet_names_both_splits():
    out = decide([scored(2, 0.95, 0.70)], None, SETTINGS, split_counts=SITE)
    assert out[0].promoted and out[0].reason.startswith("no champion yet; test_site macro-F1 0.7000 (test 0.9500)")


@pytest.mark.parametrize(("counts", "why"), [
    ({**ENOUGH, "partial_mask": 7}, "test_site has 7 partial_mask faces, needs 20; ranked on test"),
    ({"with_mask": 30, "without_mask": 3, "partial_mask": 0},
     "test_site has 3 without_mask and 0 partial_mask faces, needs 20 per class; ranked on test"),
])
def test_too_few_site_faces_rank_on_test_and_say_why(counts, why):
    assert split_shortfall(SITE_TEST_SPLIT, counts, SETTINGS) == why.removesuffix("; ranked on test")
    out = decide([scored(2, 0.91, 0.10)], scored(1, 0.90, 0.99), SETTINGS, split_counts={SITE_TEST_SPLIT: counts})
    assert [(d.status, d.ranked_on) for d in out] == [("champion", "test"), ("retired", "test")]
    # The site split was scored all the same: its figures are in the reason.
    assert "macro-F1 0.9100 beats champion v1 (0.9000)" in out[0].reason and out[0].reason.endswith(why)
    assert "(test_site 0.1000 vs 0.9900)" in out[0].reason


def test_without_a_site_split_the_rules_and_reasons_are_unchanged():
    out = decide([scored(2, 0.91)], scored(1, 0.90), SETTINGS)
    assert out[0].ranked_on == "test" and "test_site" not in out[0].reason
    assert split_shortfall(SITE_TEST_SPLIT, None, SETTINGS) is None


def test_site_evaluation_problems():
    broken = scored(2, 0.95, None, problem="no readable test_site images")
    nan = scored(3, 0.95, float("nan"), finite=False)
    out = decide([broken, nan, scored(4, 0.85, 0.9)], scored(1, 0.9, 0.8), SETTINGS, split_counts=SITE)
    by = {d.version: d for d in out}
    assert "could not be evaluated on test_site: no readable" in by["v2"].reason
    assert "test_site evaluation produced NaN/inf" in by["v3"].reason
    assert by["v4"].promoted
    # A champion that cannot be scored on the site: everyone is ranked on test, and the reason says why.
    out = decide([scored(2, 0.95, 0.99)], scored(1, 0.9, None, problem="checkpoint gone"), SETTINGS,
                 split_counts=SITE)
    assert out[0].ranked_on == "test" and "champion v1 has no test_site macro-F1 (checkpoint gone)" in out[0].reason


def test_promote_scores_the_site_split_and_stores_per_split_metrics(migrated_db_url, tmp_path):
    settings = load_settings(overrides={"promotion_margin": 0.005, "min_macro_f1": 0.5, "min_class_recall": 0.5,
                                        "site_split_min_per_class": 3}, environ={})
    engine = database.open_database(migrated_db_url)
    test_ev, site_ev = FakeEvaluator(), FakeEvaluator()
    try:
        def candidate(name: str, test: float, site: float, seed: int):
            path = make_ckpt(tmp_path / f"{name}.pt", metrics(test), seed=seed)
            test_ev.results[path.resolve()] = metrics(test)
            site_ev.results[path.resolve()] = metrics(site)
            from maskjob.storage.registry import register

            return register(engine, path)

        champ = candidate("champ", 0.9, 0.6, 1)
        on_site = {SITE_TEST_SPLIT: site_ev}
        promote(engine, tmp_path, settings, evaluate=test_ev, evaluate_on=on_site)
        assert site_ev.calls == []  # no test_site split: never scored on it

        fill_split(tmp_path, SITE_TEST_SPLIT, per_class=2)
        small = candidate("small", 0.902, 0.99, 2)
        result = promote(engine, tmp_path, settings, evaluate=test_ev, evaluate_on=on_site)
        assert not result.promoted and result.decisions[0].ranked_on == "test"
        assert {p.name for p in site_ev.calls} == {"small.pt", "champ.pt"}  # scored, too small to rank
        assert result.decisions[0].reason.endswith(
            "(test_site 0.9900 vs 0.6000); test_site has 2 with_mask, 2 without_mask and 2 partial_mask faces, "
            "needs 3 per class; ranked on test")

        fill_split(tmp_path, SITE_TEST_SPLIT, per_class=3)
        site_best = candidate("site_best", 0.88, 0.75, 3)
        site_ev.calls.clear()
        result = promote(engine, tmp_path, settings, evaluate=test_ev, evaluate_on=on_site)
        assert result.promoted.id == site_best.id
        assert {p.name for p in site_ev.calls} == {"site_best.pt", "champ.pt"}
        assert result.decisions[0].reason.startswith("test_site macro-F1 0.7500 beats champion")
        assert "(test 0.8800 vs 0.9000)" in result.decisions[0].reason
        rows = {v.id: v for v in list_versions(engine)}
        for vid, site in ((site_best.id, 0.75), (champ.id, 0.6)):
            splits = rows[vid].metrics["splits"]
            assert splits[SITE_TEST_SPLIT]["macro_f1"] == pytest.approx(site)
            assert "predictions" not in splits["test"] and splits["test"]["evaluated_at"]
        assert rows[small.id].metrics["splits"]["test"]["macro_f1"] == pytest.approx(0.902)
        assert rows[small.id].metrics["splits"][SITE_TEST_SPLIT]["macro_f1"] == pytest.approx(0.99)
    finally:
        engine.dispose()
