"""Configuration: defaults load; a wrong key or type fails naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nptrack.config import Config, ConfigError, load_config
from tests.conftest import REPO


def test_default_file_equals_model_defaults() -> None:
    assert load_config(REPO / "configs" / "default.toml") == Config()
    assert load_config(None) == Config()


def test_misspelt_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[register]\nlevles = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "register.levles" in msg and str(path) in msg and "\n" not in msg


def test_unknown_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[registr]\nlevels = 4\n")
    with pytest.raises(ConfigError, match="registr"):
        load_config(path)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[track]\nwindow_frames = "ten"\n')
    with pytest.raises(ConfigError, match=r"track\.window_frames") as err:
        load_config(path)
    assert "ten" in str(err.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"register\.levels"):
        load_config(None, ["register.levels=0"])


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[register]\nlevels = 3\n")
    cfg = load_config(path, ["register.levels=4", "register.model=translation", "watch.poll=true"])
    assert cfg.register.levels == 4
    assert cfg.register.model == "translation"
    assert cfg.watch.poll is True
    assert cfg.track.window_frames == Config().track.window_frames
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["register.levels"])
    with pytest.raises(ConfigError, match=r"register\.nope"):
        load_config(None, ["register.nope=1"])


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[register\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
