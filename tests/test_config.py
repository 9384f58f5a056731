"""Config overrides: typed parsing, unknown keys with suggestions, cross-field checks."""

import dataclasses
import json
import re

import pytest

from jaxlm.config import Config, ConfigError, apply_overrides, config_from_dict


def test_override_parses_each_type():
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=1e-4",
            "train.steps=12",
            "model.qk_norm=true",
            "model.attention_impl=naive",
            "name=abc",
        ],
    )
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.model.qk_norm is True
    assert cfg.model.attention_impl == "naive"
    assert cfg.name == "abc"
    # the original is frozen and untouched
    assert Config().optim.lr != 1e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*'optim\.lr'"):
        apply_overrides(Config(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'modle\.d_model'.*'model\.d_model'"):
        apply_overrides(Config(), ["modle.d_model=8"])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.steps=ten", r"train\.steps='ten' is not an integer"),
        ("optim.lr=fast", r"optim\.lr='fast' is not a number"),
        ("model.qk_norm=maybe", r"model\.qk_norm='maybe' is not a boolean"),
        ("model.remat=some", r"model\.remat='some' is not one of"),
        ("model.scan_layers=maybe", r"model\.scan_layers='maybe' is not one of: true/false"),
        ("optim=3", r"'optim' is a section"),
        ("train.steps", r"not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [item])


def test_cross_field_validation_names_both_keys():
    with pytest.raises(ConfigError, match=r"model\.n_heads=6.*model\.n_kv_heads=4"):
        apply_overrides(Config(), ["model.n_heads=6"])
    with pytest.raises(ConfigError, match=r"data\.seq_len=512 exceeds model\.max_seq_len=256"):
        apply_overrides(Config(), ["data.seq_len=512"])
    with pytest.raises(ConfigError, match=r"train\.steps=0 must be positive"):
        apply_overrides(Config(), ["train.steps=0"])


def test_json_round_trip_and_type_check():
    cfg = apply_overrides(Config(), ["optim.lr=0.5", "model.n_layers=2"])
    data = json.loads(cfg.to_json())
    assert config_from_dict(data) == cfg
    data["model"]["n_layers"] = "2"
    with pytest.raises(ConfigError, match=r"model\.n_layers='2' should be int"):
        config_from_dict(data)
    data["model"]["n_layers"] = 2
    data["model"]["n_layayers"] = 2
    with pytest.raises(ConfigError, match=r"model\.n_layayers.*model\.n_layers"):
        config_from_dict(data)


def test_overrides_are_validated_together_in_any_order():
    a = apply_overrides(Config(), ["model.n_heads=2", "model.n_kv_heads=1"])
    b = apply_overrides(Config(), ["model.n_kv_heads=1", "model.n_heads=2"])
    assert a == b and a.model.n_heads == 2 and a.model.n_kv_heads == 1


def test_cudnn_attention_constraints_fail_at_config_time():
    with pytest.raises(ConfigError, match=r"attention_impl=cudnn needs model\.compute_dtype"):
        apply_overrides(Config(), ["model.attention_impl=cudnn"])
    with pytest.raises(ConfigError, match=r"multiple of 8.*head_dim=12"):
        apply_overrides(
            Config(),
            ["model.attention_impl=cudnn", "model.compute_dtype=bfloat16", "model.d_model=48"],
        )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("data.sources=csv:a.csv", "data.sources: unknown source kind 'csv'"),
        ("data.sources=jsonl", "data.sources: 'jsonl' needs a path"),
        ("data.sources=stdlib@0", "data.sources: weight in 'stdlib@0' must be positive"),
        ("data.eval_sources=text:a.txt@x", "data.eval_sources: weight 'x'"),
        ("data.sources=tokens:shards/a", "pre-tokenized sources need data.tokenizer"),
    ],
)
def test_bad_sources_fail_at_config_time(item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(Config(), [item])


def test_a_mixture_with_a_tokenizer_is_accepted():
    cfg = apply_overrides(
        Config(), ["data.sources=tokens:shards/a@3,jsonl:b.jsonl", "data.tokenizer=t.model"]
    )
    assert cfg.data.sources == "tokens:shards/a@3,jsonl:b.jsonl"


def test_a_bool_or_auto_key_takes_either():
    """model.scan_layers is `bool | Literal["auto"]`: each member parses from --set and
    type checks from JSON (a config.json saved when it was a plain bool still loads)."""
    for text, value in (("auto", "auto"), ("true", True), ("off", False)):
        cfg = apply_overrides(Config(), [f"model.scan_layers={text}"])
        assert cfg.model.scan_layers == value
        assert config_from_dict(json.loads(cfg.to_json())) == cfg
    data = json.loads(Config().to_json())
    data["model"]["scan_layers"] = 1
    with pytest.raises(ConfigError, match=r"model\.scan_layers=1 is not one of"):
        config_from_dict(data)
