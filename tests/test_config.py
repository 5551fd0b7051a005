import tomllib
from pathlib import Path

import pytest

from gencli.config import DecodingOptions, Settings, load_config_file, resolve_settings
from gencli.errors import GencliError

CONFIGS = Path(__file__).parent.parent / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_default_toml_matches_built_in_defaults():
    values = load_config_file(CONFIGS / "default.toml")
    assert resolve_settings(CONFIGS / "default.toml", {}) == Settings()
    # every key except the seed (which TOML cannot set to "unset") is written out
    assert set(values) == set(Settings().as_flat_dict()) - {"seed"}


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_preset_loads(preset):
    resolve_settings(CONFIGS / preset, {})


def test_creative_preset_samples():
    settings = resolve_settings(CONFIGS / "creative.toml", {})
    assert settings.decoding.samples and settings.decoding.top_p == 0.95


def test_precedence_flag_over_file_over_default(tmp_path):
    path = write(tmp_path, 'top_k = 7\ntemperature = 0.5\nstop = "END"\n')
    settings = resolve_settings(path, {"temperature": 0.3, "top_k": None})
    assert settings.decoding.temperature == 0.3  # flag wins
    assert settings.decoding.top_k == 7  # file wins over the default
    assert settings.decoding.stop == ("END",)  # a single string is a one-item list
    assert settings.decoding.top_p == DecodingOptions().top_p  # default
    assert settings.model == "gpt2"


def test_integers_are_accepted_for_floats(tmp_path):
    assert load_config_file(write(tmp_path, "temperature = 1\n")) == {"temperature": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown key(s) 'colour'"),
        ("top_p = 'x'\n", "'top_p' must be a number"),
        ("sample = 1\n", "'sample' must be true or false"),
        ("top_k = true\n", "'top_k' must be an integer"),
        ("stop = [1]\n", "'stop' must be a string or a list of strings"),
        ("top_p = 0\n", "'top_p' in"),
        ("mode = 'fast'\n", "'mode' in"),
        ("top_p = \n", "is not valid TOML"),
    ],
)
def test_bad_config_files_are_refused(tmp_path, text, message):
    with pytest.raises(GencliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config_file(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(GencliError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")


def test_temperature_zero_means_greedy():
    assert not DecodingOptions(sample=True, temperature=0).samples
    assert DecodingOptions(sample=True, temperature=0.7).samples


def test_presets_are_valid_toml_with_known_keys():
    for path in CONFIGS.glob("*.toml"):
        assert set(tomllib.loads(path.read_text())) <= set(Settings().as_flat_dict())
