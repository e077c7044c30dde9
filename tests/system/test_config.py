from dataclasses import fields
from pathlib import Path

import pytest

from maskjob.config import BOUNDS, CHOICES, Settings, load_settings, replace
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
        ("seed = 'x'", "expected an int"),
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


# --- strict types ------------------------------------------------------------------------

def _from_toml(tmp_path, text, environ=None):
    cfg = tmp_path / "strict.toml"
    cfg.write_text(text)
    return load_settings(cfg, environ=environ or {})


@pytest.mark.parametrize("text", ["seed = 3.7", "seed = '3.7'", "seed = 3.0", "seed = true", "seed = [3]",
                                  "seed = {a = 3}", "seed = ''", "seed = '3 apples'"])
def test_int_setting_refuses_non_integers_from_toml(tmp_path, text):
    with pytest.raises(MaskjobError, match=r"bad setting seed from .*strict.toml: expected an int"):
        _from_toml(tmp_path, text)


@pytest.mark.parametrize("raw", ["3.7", "3.0", "three", "1e3", "true"])
def test_int_setting_refuses_non_integers_from_env_and_flags(raw):
    with pytest.raises(MaskjobError, match=r"\$MASKJOB_SEED: expected an int"):
        load_settings(environ={"MASKJOB_SEED": raw})
    with pytest.raises(MaskjobError, match="seed from command line: expected an int"):
        load_settings(overrides={"seed": raw}, environ={})
    with pytest.raises(MaskjobError, match="seed from command line: expected an int"):
        load_settings(overrides={"seed": 3.7}, environ={})


@pytest.mark.parametrize("text", ["seed = 3", "seed = '3'", "seed = ' 3 '", "seed = '+3'"])
def test_int_setting_accepts_whole_numbers(tmp_path, text):
    assert _from_toml(tmp_path, text).seed == 3
    assert load_settings(environ={"MASKJOB_SEED": "3"}).seed == 3
    assert load_settings(overrides={"seed": 3}, environ={}).seed == 3


def test_float_setting_accepts_ints_and_numeric_strings(tmp_path):
    s = _from_toml(tmp_path, "promotion_margin = 0\nretrain_max_age_days = 3\nmin_macro_f1 = '0.5'")
    assert (s.promotion_margin, s.retrain_max_age_days, s.min_macro_f1) == (0.0, 3.0, 0.5)
    assert load_settings(environ={"MASKJOB_DEMO_SCALE": "2"}).demo_scale == 2.0


@pytest.mark.parametrize("text", ["demo_scale = true", "demo_scale = 'big'", "demo_scale = [1.0]",
                                  "demo_scale = inf", "demo_scale = nan", "demo_scale = {x = 1}"])
def test_float_setting_refuses_non_numbers(tmp_path, text):
    with pytest.raises(MaskjobError, match="bad setting demo_scale from .*: expected a finite number"):
        _from_toml(tmp_path, text)


@pytest.mark.parametrize("text", ["detector = 3", "detector = ['mtcnn']", "detector = {name = 'mtcnn'}",
                                  "detector = true", "transfer_arch = 1.5"])
def test_str_setting_refuses_numbers_lists_and_tables(tmp_path, text):
    with pytest.raises(MaskjobError, match=r"bad setting (detector|transfer_arch) from .*: expected a string"):
        _from_toml(tmp_path, text)


@pytest.mark.parametrize("text", ["data_dir = 3", "data_dir = true", "data_dir = ['a']", "models_dir = {a = 1}",
                                  "inbox_dir = 2.5", "data_dir = ''"])
def test_path_setting_refuses_non_strings_from_toml(tmp_path, text):
    with pytest.raises(MaskjobError, match=r"bad setting \w+ from .*: expected a path"):
        _from_toml(tmp_path, text)


def test_path_setting_from_env_is_always_a_string(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={"MASKJOB_DATA_DIR": "123"}).data_dir == tmp_path / "123"
    assert _from_toml(tmp_path, f"data_dir = '{tmp_path / 'd'}'").data_dir == tmp_path / "d"


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("false", False), ("yes", True), ("no", False),
                                            ("on", True), ("off", False), ("1", True), ("0", False), (" TRUE ", True)])
def test_bool_setting_env_spellings(raw, value):
    assert load_settings(environ={"MASKJOB_BLUR_FACES": raw}).blur_faces is value


@pytest.mark.parametrize(("text", "ok"), [("blur_faces = true", True), ("blur_faces = false", False),
                                          ("blur_faces = 1", None), ("blur_faces = 'maybe'", None),
                                          ("blur_faces = [true]", None), ("blur_faces = 0.0", None)])
def test_bool_setting_from_toml(tmp_path, text, ok):
    if ok is None:
        with pytest.raises(MaskjobError, match="bad setting blur_faces from .*: expected true or false"):
            _from_toml(tmp_path, text)
    else:
        assert _from_toml(tmp_path, text).blur_faces is ok


def test_maskjob_table_and_top_level_keys_together_is_an_error(tmp_path):
    text = "seed = 5\nshards = 3\n[maskjob]\nbatch_size = 8\n"
    with pytest.raises(MaskjobError, match=r"\['seed', 'shards'\] outside it; put them all under \[maskjob\] "
                                           r"or all at the top level"):
        _from_toml(tmp_path, text)


@pytest.mark.parametrize("text", ["seed = 5\n[other]\nx = 1\n", "[tool.maskjob]\nseed = 5\n",
                                  "[database]\nurl = 'x'\n"])
def test_tables_other_than_maskjob_are_errors(tmp_path, text):
    with pytest.raises(MaskjobError, match=r"has tables \[.*\]; the only table maskjob reads is \[maskjob\]"):
        _from_toml(tmp_path, text)


def test_maskjob_key_that_is_not_a_table(tmp_path):
    with pytest.raises(MaskjobError, match=r"'maskjob' must be a table"):
        _from_toml(tmp_path, "maskjob = 3\n")


def test_either_layout_alone_is_fine(tmp_path):
    assert _from_toml(tmp_path, "seed = 5\n").seed == 5
    assert _from_toml(tmp_path, "[maskjob]\nseed = 6\n").seed == 6


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(MaskjobError, match="is a directory, not a TOML file"):
        load_settings(tmp_path, environ={})
    with pytest.raises(MaskjobError, match="is a directory"):
        load_settings(environ={"MASKJOB_CONFIG": str(tmp_path)})


def test_config_file_that_is_not_text(tmp_path):
    cfg = tmp_path / "binary.toml"
    cfg.write_bytes(b"\xff\xfe\x00seed = 1")
    with pytest.raises(MaskjobError, match="not UTF-8 text"):
        load_settings(cfg, environ={})


def test_database_url_of_the_wrong_type_is_not_echoed(tmp_path):
    with pytest.raises(MaskjobError, match="expected a string, got a list") as info:
        _from_toml(tmp_path, "database_url = ['postgresql://u:hunter2@h/db']")
    assert "hunter2" not in str(info.value)


def test_replace_and_direct_construction_are_type_checked():
    s = load_settings(environ={})
    with pytest.raises(MaskjobError, match="bad setting seed: expected an int"):
        replace(s, seed="3")
    with pytest.raises(MaskjobError, match="bad setting blur_faces: expected true or false"):
        replace(s, blur_faces="yes")
    with pytest.raises(MaskjobError, match="bad setting data_dir: expected a path"):
        Settings(data_dir=3)
    assert replace(s, promotion_margin=0).promotion_margin == 0
    assert Settings(data_dir="x").data_dir == Path("x").resolve()


def test_bounds_and_choices_still_apply_after_coercion(tmp_path):
    with pytest.raises(MaskjobError, match="shards must be >= 1"):
        load_settings(environ={"MASKJOB_SHARDS": "0"})
    with pytest.raises(MaskjobError, match="detector must be one of"):
        _from_toml(tmp_path, "detector = 'haar'")
