"""Dotted overrides, typed parsing, errors naming the closest keys, and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from pipeline.config import (
    Config,
    ConfigError,
    DataConfig,
    OptimizerConfig,
    apply_overrides,
    flat_keys,
    from_dict,
    to_dict,
    to_json,
)
from pipeline.experiments import load_config
from pipeline.models import MLPConfig


def test_contract_keys_exist_and_parse_to_their_types():
    cfg = apply_overrides(Config(), [
        "optimizer.learning_rate=3e-3", "model.hidden=128,128", "data=mine", "seed=7", "steps=1e3",
        "batch_size=32", "optimizer.name=sgd", "model.name=mlp", "model.activation=tanh",
    ])
    assert cfg.optimizer.learning_rate == 3e-3 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.model.hidden == (128, 128)
    assert cfg.data == DataConfig(name="mine")
    assert (cfg.seed, cfg.steps, cfg.batch_size) == (7, 1000, 32)
    assert isinstance(cfg.steps, int)
    assert (cfg.optimizer.name, cfg.model.name, cfg.model.activation) == ("sgd", "mlp", "tanh")
    # Everything not overridden keeps its default.
    untouched = {k: v for k, v in flat_keys(cfg).items() if k not in {
        "optimizer.learning_rate", "model.hidden", "data.name", "seed", "steps", "batch_size",
        "optimizer.name", "model.activation"}}
    assert untouched == {k: v for k, v in flat_keys(Config()).items() if k in untouched}


@pytest.mark.parametrize("text, hidden", [
    ("", ()), ("64", (64,)), ("100,100", (100, 100)), ("(8, 16, 32)", (8, 16, 32)), ("4,", (4,)),
])
def test_hidden_widths(text, hidden):
    assert apply_overrides(Config(), [f"model.hidden={text}"]).model.hidden == hidden


def test_overrides_apply_in_order_and_leave_the_input_alone():
    base = Config()
    cfg = apply_overrides(base, ["steps=10", "steps=20", "optimizer=momentum", "model=mlp", "data_seed=3"])
    assert cfg.steps == 20
    assert cfg.optimizer.name == "momentum"  # a section given a value sets its name
    assert cfg.data_seed == 3 and cfg.resolved_data_seed == 3
    assert apply_overrides(cfg, ["data_seed=none"]).resolved_data_seed == cfg.seed
    assert base == Config()


def test_booleans_and_optional_ints():
    cfg = apply_overrides(Config(), ["model.tie_embeddings=false", "data_seed=null", "model.name=transformer"])
    assert cfg.model.tie_embeddings is False and cfg.data_seed is None
    assert apply_overrides(cfg, ["model.tie_embeddings=YES"]).model.tie_embeddings is True


def test_experiment_config_with_overrides():
    cfg = load_config("digits_mlp", ["model.hidden=100", "data=n"])
    assert cfg.model.hidden == (100,) and cfg.data.name == "n"
    assert cfg.optimizer.name == "adam"  # the experiment's own choice survives


@pytest.mark.parametrize("key, close", [
    ("optimizer.learning_rat", "optimizer.learning_rate"),
    ("learning_rate", "optimizer.learning_rate"),
    ("model.hiden", "model.hidden"),
    ("step", "steps"),
    ("batchsize", "batch_size"),
])
def test_unknown_key_names_the_closest_valid_keys(key, close):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [f"{key}=1"])
    message = str(err.value)
    assert message.startswith(f"unknown config key '{key}'; did you mean ")
    assert close in message.split("did you mean ", 1)[1]
    assert "\n" not in message


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'zzzz'; valid keys: data\.name, .*model\.hidden"):
        apply_overrides(Config(), ["zzzz=1"])


def test_a_section_given_a_value_sets_its_name():
    cfg = apply_overrides(Config(), ["model=mlp", "optimizer=sgd", "data=x"])
    assert (cfg.model.name, cfg.optimizer.name, cfg.data.name) == ("mlp", "sgd", "x")


@pytest.mark.parametrize("key", ["model.name.x", "seed.value", "model.hidden.x", "optimizer.nme"])
def test_paths_that_are_not_leaves_are_unknown(key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        apply_overrides(Config(), [f"{key}=1"])


@pytest.mark.parametrize("item, message", [
    ("steps=abc", "bad value for 'steps': 'abc' is not an integer"),
    ("steps=1.5", "bad value for 'steps': '1.5' is not an integer"),
    ("optimizer.learning_rate=fast", "bad value for 'optimizer.learning_rate': 'fast' is not a finite number"),
    ("optimizer.learning_rate=nan", "bad value for 'optimizer.learning_rate': 'nan' is not a finite number"),
    ("optimizer.learning_rate=inf", "bad value for 'optimizer.learning_rate': 'inf' is not a finite number"),
    ("model.hidden=128,x", "bad value for 'model.hidden': '128,x' is not a comma-separated list of integers"),
    ("model.name=transformer model.tie_embeddings=maybe",
     "bad value for 'model.tie_embeddings': 'maybe' is not a boolean"),
    ("data_seed=x", "bad value for 'data_seed': 'x' is not an integer"),
    ("optimizer.name=rmsprob", "bad value for 'optimizer.name': 'rmsprob'; choose one of adafactor, adagrad, adam, "),
    ("model.activation=swish", "bad value for 'model.activation': 'swish'; choose one of"),
    ("steps=0", "bad value for 'steps': 0 must be at least 1"),
    ("optimizer.learning_rate=0", "bad value for 'optimizer.learning_rate': must be positive"),
    ("model.dropout=1", "bad value for 'model.dropout': 1.0 must be in [0, 1)"),
    ("label_smoothing=1.5", "bad value for 'label_smoothing': 1.5 must be in [0, 1)"),
    ("optimizer.weight_decay=-0.1", "bad value for 'optimizer.weight_decay': -0.1 must not be negative"),
    ("optimizer.b2=1", "bad value for 'optimizer.b2': 1.0 must be in [0, 1)"),
    ("model.hidden=64,0", "bad value for 'model.hidden': 64,0: every width must be at least 1"),
    ("model.hidden=-3", "bad value for 'model.hidden': -3: every width must be at least 1"),
    ("steps", "override 'steps' is not KEY=VALUE"),
])
def test_bad_values_are_one_line_errors_naming_the_key(item, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), item.split(" "))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_json_round_trip():
    cfg = Config(
        data=DataConfig(name="n", validation_fraction=0.1), seed=3, data_seed=None, steps=17,
        label_smoothing=0.05, model=MLPConfig(hidden=(), activation="gelu", dropout=0.25),
        optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine", warmup_steps=5,
                                  weight_decay=0.01, clip_norm=1.0),
    )
    text = to_json(cfg)
    back = from_dict(Config, json.loads(text))
    assert back == cfg
    assert isinstance(back.model.hidden, tuple) and isinstance(back.data, DataConfig)
    assert to_json(back) == text
    assert from_dict(Config, json.loads(to_json(Config(data_seed=4, model=MLPConfig(hidden=(8, 9)))))) == Config(
        data_seed=4, model=MLPConfig(hidden=(8, 9)))
    assert to_dict(cfg)["optimizer"]["learning_rate"] == 3e-3


def test_a_saved_config_with_an_unknown_key_is_an_error():
    data = json.loads(to_json(Config()))
    data["model"]["widths"] = [3]
    with pytest.raises(ConfigError, match="unknown config key 'widths' in saved config"):
        from_dict(Config, data)
