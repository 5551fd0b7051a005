"""The settings schema and its layers: types, ranges, precedence, and errors that carry the key."""

import json
import tomllib
from pathlib import Path

import pytest

from gencli.errors import GencliError
from gencli.settings import (
    SETTING_KEYS,
    Layer,
    SettingError,
    UnknownSettingError,
    check_values,
    checkpoint_layer,
    env_layer,
    gather_layers,
    preset_names,
    preset_path,
    resolve,
    text_values,
    toml_layer,
    user_config_path,
)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_built_in_defaults_are_the_default_preset_written_out():
    defaults = resolve().settings
    assert defaults.repetition_penalty == 1.2 and defaults.no_repeat_ngram_size == 3
    assert resolve([toml_layer(preset_path("default"), "preset")]).settings == defaults
    # every key except those unset by default (TOML cannot write "unset") is written out
    unset = {"seed", "regex", "json_schema", "grammar", "draft_model"}
    assert set(tomllib.loads(preset_path("default").read_text())) == set(SETTING_KEYS) - unset


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    resolve([toml_layer(preset_path(name), "preset")])


def test_presets_live_in_configs_and_install_as_gencli_presets():
    root = Path(__file__).parent.parent
    assert set(preset_names()) == {path.stem for path in (root / "configs").glob("*.toml")}
    assert preset_path("creative").read_bytes() == (root / "configs" / "creative.toml").read_bytes()
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"gencli.presets": "configs"}
    assert setuptools["package-data"]["gencli.presets"] == ["*.toml"]
    # The package list is written out (a mapped folder cannot be found): it must name every package.
    folders = {
        ".".join(init.parent.relative_to(root).parts) for init in (root / "gencli").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders | {"gencli.presets"}
    with pytest.raises(GencliError, match="unknown preset 'wild'; choose from creative, default, focused"):
        preset_path("wild")


def test_later_layers_win_and_origins_say_where_each_value_came_from(tmp_path):
    file = toml_layer(write(tmp_path, 'top_k = 7\ntemperature = 0.5\nstop = "END"\n'), "--config")
    flags = Layer({"temperature": 0.3}, lambda key: "--" + key)
    resolved = resolve([file, flags])
    assert resolved.settings.temperature == 0.3 and resolved.origins["temperature"] == "--temperature"
    assert (
        resolved.settings.top_k == 7 and resolved.origins["top_k"] == f"--config {tmp_path / 'config.toml'}"
    )
    assert resolved.settings.stop == ("END",)  # a single string is a one-item list
    assert resolved.settings.top_p == 1.0 and resolved.origins["top_p"] == "default"


def test_checkpoint_options_sit_just_above_the_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "top_k": 7, "temperature": 0.6, "num_beams": 4, "eos_token_id": 5})
    )
    layer, ignored = checkpoint_layer(tmp_path)
    assert layer.values == {"sample": True, "top_k": 7, "temperature": 0.6}
    assert ignored == ("num_beams",)  # bookkeeping such as eos_token_id is not reported
    user = Layer({"top_k": 3}, lambda key: "user")
    resolved = resolve([user], checkpoint_folder=tmp_path)
    assert resolved.settings.top_k == 3 and resolved.origins["top_k"] == "user"
    assert resolved.settings.temperature == 0.6
    assert resolved.origins["temperature"] == str(tmp_path / "generation_config.json")
    assert resolved.ignored_checkpoint_keys == ("num_beams",)


def test_a_checkpoint_without_generation_config_sets_nothing(tmp_path):
    layer, ignored = checkpoint_layer(tmp_path)
    assert layer.values == {} and ignored == ()


def test_typed_sources_must_give_the_right_type(tmp_path):
    assert toml_layer(write(tmp_path, "temperature = 1\n"), "--config").values == {"temperature": 1.0}
    for text, key in [
        ("sample = 1\n", "sample"),
        ("top_k = true\n", "top_k"),
        ("max_new_tokens = 3.0\n", "max_new_tokens"),
    ]:
        with pytest.raises(SettingError) as caught:
            toml_layer(write(tmp_path, text), "--config")
        assert caught.value.key == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "has unknown key(s) 'colour'; known keys are: max_new_tokens"),
        ("top_p = 'x'\n", "'top_p' in --config CONFIG must be a number in (0, 1]; 1 turns it off, got 'x'"),
        ("stop = [1]\n", "'stop' in --config CONFIG must be a string or a list of non-empty strings"),
        ("stop = ['']\n", "'stop' in --config CONFIG must be a string or a list of non-empty strings"),
        ("mode = 'fast'\n", "'mode' in --config CONFIG must be one of generate, greedy, kv-cache, scratch"),
        ("seed = 18446744073709551616\n", "'seed' in --config CONFIG must be an integer in [0, 2**64)"),
        (
            "temperature = nan\n",
            "'temperature' in --config CONFIG must be a number, 0 (greedy) or at least 1e-06",
        ),
        ("model = ''\n", "'model' in --config CONFIG must be a Hugging Face hub id"),
        ("top_p = \n", "is not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(GencliError) as caught:
        toml_layer(path, "--config")
    assert message.replace("CONFIG", str(path)) in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(GencliError, match="does not exist"):
        toml_layer(tmp_path / "nope.toml", "--config")


def test_environment_variables_are_parsed_from_text():
    layer = env_layer(
        {"GENCLI_MAX_NEW_TOKENS": "12", "GENCLI_SAMPLE": "yes", "GENCLI_STOP": "END", "PATH": "/bin"}
    )
    assert layer.values == {"max_new_tokens": 12, "sample": True, "stop": ("END",)}
    assert layer.describe("sample") == "GENCLI_SAMPLE"


def test_environment_errors_name_the_variable():
    with pytest.raises(
        SettingError, match=r"^GENCLI_TOP_P must be a number in \(0, 1\]; 1 turns it off, got '2'$"
    ):
        env_layer({"GENCLI_TOP_P": "2"})
    with pytest.raises(
        GencliError, match=r"unknown environment variable\(s\) GENCLI_TOPP; gencli reads GENCLI_<KEY>"
    ):
        env_layer({"GENCLI_TOPP": "0.5"})


def test_text_options_take_hugging_face_names_and_refuse_the_rest():
    name = lambda key: f"-o {key}"  # noqa: E731
    assert text_values([("min_p", "0.05"), ("do_sample", "true")], name) == {"min_p": 0.05, "sample": True}
    assert text_values([("suppress_tokens", "13, 198")], name) == {"suppress_tokens": (13, 198)}
    with pytest.raises(GencliError, match="-o num_beams: 'num_beams' is a Hugging Face generation option"):
        text_values([("num_beams", "4")], name)
    with pytest.raises(GencliError, match="-o colour: unknown generation option 'colour'"):
        text_values([("colour", "red")], name)
    with pytest.raises(GencliError, match="'model' is not a generation option; use --model"):
        text_values([("model", "demo")], name)
    with pytest.raises(SettingError, match=r"^-o min_p must be a number in \[0, 1\]"):
        text_values([("min_p", "lots")], name)


def test_check_values_carries_the_key_and_value():
    with pytest.raises(SettingError) as caught:
        check_values({"top_k": -1}, name=lambda key: f"--{key}")
    assert (caught.value.key, caught.value.value, caught.value.name) == ("top_k", -1, "--top_k")


def test_unknown_keys_error_carries_them():
    error = UnknownSettingError({"b", "a"}, "the line")
    assert error.keys == ["a", "b"]


def test_user_config_file_lives_in_the_platform_config_directory(user_dirs):
    assert user_config_path() == user_dirs / "user-config" / "gencli" / "config.toml"


def test_gather_layers_reads_the_user_file_then_the_config_then_the_environment(tmp_path, user_dirs):
    user_config_path().parent.mkdir(parents=True)
    user_config_path().write_text("top_k = 1\ntop_p = 0.5\nmodel = 'demo'\n")
    config = write(tmp_path, "top_k = 2\ntemperature = 0.7\n")
    layers = gather_layers(config=config, environ={"GENCLI_TEMPERATURE": "0.9"})
    resolved = resolve(layers)
    assert (resolved.settings.top_p, resolved.settings.top_k, resolved.settings.temperature) == (0.5, 2, 0.9)
    assert resolved.origins["top_p"] == f"user config {user_config_path()}"
    assert resolved.origins["temperature"] == "GENCLI_TEMPERATURE"


def test_config_and_preset_are_one_layer(tmp_path):
    with pytest.raises(GencliError, match="--config and --preset both name a settings file"):
        gather_layers(config=write(tmp_path, ""), preset="creative", environ={})
