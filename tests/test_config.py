import pytest

from maskjob.config import load_settings
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
