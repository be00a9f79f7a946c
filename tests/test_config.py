"""AdaptivePrefixConfig: every bad field is refused by name with what it expects and what it got; dict round trip."""

import json
import re

import pytest

from adaprefix import AdaprefixError, AdaptivePrefixConfig, ConfigError

BAD = [
    ("method", "lora", "one of apt, pt2, token-gate, layer-gate"),
    ("gate_pooling", "max", "one of auto, mean, cls, token"),
    ("prefix_length", 0, "a positive integer"),
    ("prefix_length", "4", "a positive integer"),
    ("prefix_length", True, "a positive integer"),
    ("prefix_lengths", [], "one integer >= 0 per layer, at least one > 0"),
    ("prefix_lengths", [0, 0], "one integer >= 0 per layer, at least one > 0"),
    ("prefix_lengths", [2, -1], "one integer >= 0 per layer, at least one > 0"),
    ("prefix_lengths", [2, 1.5], "one integer >= 0 per layer, at least one > 0"),
    ("prefix_projection", "yes", "true or false"),
    ("projection_hidden_size", 0, "a positive integer"),
    ("projection_hidden_size", 2.5, "a positive integer"),
    ("prefix_dropout", 1.0, "None or a value in [0, 1)"),
    ("prefix_dropout", 1.5, "None or a value in [0, 1)"),
    ("prefix_dropout", -0.1, "None or a value in [0, 1)"),
    ("prefix_dropout", "0.1", "None or a value in [0, 1)"),
    ("prefix_init_std", 0.0, "a value > 0"),
    ("projection_init_std", 0.0, "None or a value > 0"),
    ("shift_positions", 1, "true or false"),
    ("token_gate_weight_std", -0.1, "a value >= 0"),
    ("token_gate_bias_init", "0", "a number"),
    ("layer_gate_init", "1", "a number"),
    ("gate_mode", "log", "one of scale, exact, separate"),
    ("prefix_init_text", "  ", "None or a non-empty text"),
    ("train_head", "no", "None, true or false"),
]


@pytest.mark.parametrize("field,value,expected", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_a_bad_field_is_refused_naming_the_field_what_it_expects_and_what_it_got(field, value, expected):
    with pytest.raises(ConfigError) as err:
        AdaptivePrefixConfig(**{field: value})
    assert str(err.value) == f"{field}: expected {expected}, got {value!r}"
    assert isinstance(err.value, AdaprefixError) and isinstance(err.value, ValueError)


def test_the_layer_gate_starts_at_1_for_scaling_gates_and_at_0_for_exact_ones_unless_given():
    assert AdaptivePrefixConfig().layer_gate_init == 1.0
    assert AdaptivePrefixConfig(gate_mode="exact").layer_gate_init == 0.0
    assert AdaptivePrefixConfig(gate_mode="exact", layer_gate_init=0.5).layer_gate_init == 0.5
    # Resolved at construction, so a saved config reloads to the same start whatever the default becomes.
    assert AdaptivePrefixConfig.from_dict(AdaptivePrefixConfig(gate_mode="exact").to_dict()).layer_gate_init == 0.0


def test_exact_gates_are_refused_for_pt2_which_has_no_gate():
    with pytest.raises(ConfigError, match="gate_mode: 'exact' weighs a gate, and method 'pt2' has none"):
        AdaptivePrefixConfig(method="pt2", gate_mode="exact")


def test_per_layer_lengths_and_the_projection_are_refused_together_naming_both():
    with pytest.raises(ConfigError, match="prefix_lengths: .*prefix_projection cannot be combined"):
        AdaptivePrefixConfig(prefix_lengths=[2, 2], prefix_projection=True)


def test_edge_values_that_are_valid_are_accepted():
    config = AdaptivePrefixConfig(prefix_dropout=0, projection_init_std=None, token_gate_weight_std=0,
                                  layer_gate_init=-1, token_gate_bias_init=3, train_head=False)
    assert (config.prefix_dropout, config.layer_gate_init, config.train_head) == (0, -1, False)


def test_per_layer_lengths_set_the_longest_and_must_match_the_layer_count():
    config = AdaptivePrefixConfig(prefix_lengths=(3, 0, 5))
    assert config.prefix_lengths == [3, 0, 5] and config.prefix_length == 5
    assert config.layer_lengths(3) == [3, 0, 5]
    assert AdaptivePrefixConfig(prefix_length=7).layer_lengths(2) == [7, 7]
    with pytest.raises(ConfigError, match=r"prefix_lengths: expected one length per layer \(4\), got 3"):
        config.layer_lengths(4)


@pytest.mark.parametrize("method,token,layer", [("apt", True, True), ("pt2", False, False),
                                                ("token-gate", True, False), ("layer-gate", False, True)])
def test_each_method_has_its_gates(method, token, layer):
    config = AdaptivePrefixConfig(method=method)
    assert (config.use_token_gate, config.use_layer_gate) == (token, layer)


def test_round_trip_through_a_dict_and_json_gives_the_same_config():
    config = AdaptivePrefixConfig(method="token-gate", prefix_lengths=[2, 0, 4], gate_pooling="cls",
                                  prefix_dropout=0.1, token_gate_bias_init=1.5, train_head=True)
    data = config.to_dict()
    assert data["prefix_lengths"] == [2, 0, 4] and data["prefix_length"] == 4 and data["method"] == "token-gate"
    assert AdaptivePrefixConfig.from_dict(data) == config
    assert AdaptivePrefixConfig.from_dict(json.loads(json.dumps(data))) == config


def test_from_dict_names_unknown_fields_and_lists_the_known_ones():
    with pytest.raises(ConfigError, match=re.escape("adapter.json: unknown field(s) prefix_lenght; known fields: "
                                                    "gate_mode, gate_pooling, layer_gate_init, method")):
        AdaptivePrefixConfig.from_dict({"prefix_lenght": 8}, source="adapter.json")


def test_every_field_has_help_text():
    assert all(text.strip() for text in AdaptivePrefixConfig.field_help().values())
