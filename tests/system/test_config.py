from dataclasses import fields

import pytest

from maskjob.config import BOUNDS, CHOICES, Settings, load_settings
from maskjob.errors import MaskjobError


def test_precedence_defaults_file_env_overrides(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[maskjob]\nseed = 5\nbatch_size = 8\nshards = 3\n')
    env = {"MASKJOB_BATCH_SIZE": "16", "MASKJOB_DATA_DIR": str(tmp_path / "d")}
    s = load_settings(cfg, overrides={"shards": 4}, environ=env)
    assert (s.seed, s.batch_size, s.shards) == (5, 16, 4)
    assert s.data_dir == (tmp_path / "d").resolve()
    assert s.models_dir == s.data_dir / "models"
    assert s.database_url == f"sqlite:///{s.data_dir / 'maskjob.db'}"


@pytest.mark.parametrize(
    "text, match",
    [
        ("seed = 'x'", "expected int"),
        ("nope = 1", "unknown settings"),
        ("seed = [", "not valid TOML"),
        ("val_fraction = 0.9", "val_fraction"),
    ],
)
def test_bad_config_file_is_a_clear_error(tmp_path, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(MaskjobError, match=match):
        load_settings(cfg, environ={})


def test_bad_env_value_names_the_variable():
    with pytest.raises(MaskjobError, match=r"\$MASKJOB_BLUR_FACES"):
        load_settings(environ={"MASKJOB_BLUR_FACES": "maybe"})


def test_missing_config_file():
    with pytest.raises(MaskjobError, match="does not exist"):
        load_settings("/nonexistent/maskjob.toml", environ={})


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("shards", 0, "shards must be >= 1"),
        ("promotion_margin", 1.0, r"promotion_margin must be >= 0.0 and < 1.0"),
        ("detector_threshold", 0.0, "detector_threshold must be > 0.0"),
        ("transfer_arch", "vgg16", "transfer_arch must be one of"),
        ("detector", "haar", "detector must be one of"),
    ],
)
def test_bounds_and_choices_are_enforced(name, bad, match):
    with pytest.raises(MaskjobError, match=match):
        load_settings(overrides={name: bad}, environ={})


def test_choices_equal_the_factories():
    from maskjob.ml.models import ARCHS
    from maskjob.scoring.detectors import DETECTORS

    assert set(CHOICES["transfer_arch"]) == {a for a, spec in ARCHS.items() if spec.weights is not None}
    assert set(DETECTORS) == set(CHOICES["detector"])
    assert set(BOUNDS) <= {f.name for f in fields(Settings)}
