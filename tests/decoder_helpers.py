"""Tiny decoders with real tokenizers, built offline: a byte-level BPE (GPT-2's scheme) trained on a few sentences,
and a word-level tokenizer whose ids a test can write down by hand."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2

# Prompt -> completion data for generation runs: yes/no questions, and RTE records for its text-to-text task.
QA = [("Is the sky blue? Answer:", " yes"), ("Is fire cold? Answer:", " no"), ("Is water wet? Answer:", " yes"),
      ("Is ice hot? Answer:", " no"), ("Do fish swim? Answer:", " yes"), ("Do rocks fly? Answer:", " no")]
RTE = [{"premise": "A dog barks loudly.", "hypothesis": "An animal makes noise.", "label": "entailment"},
       {"premise": "A cat sleeps on the mat.", "hypothesis": "A cat runs.", "label": "not_entailment"},
       {"premise": "It rained all day.", "hypothesis": "The ground is wet.", "label": "entailment"},
       {"premise": "The shop is closed.", "hypothesis": "The shop is open.", "label": "not_entailment"}]
#: What a tiny decoder's BPE is trained on, so that the data above tokenizes into few tokens.
QA_CORPUS = ([p + c for p, c in QA] + [f"{r['premise']} {r['hypothesis']} Yes or no? Answer: yes no" for r in RTE]) * 3


def bpe_tokenizer(corpus: list[str], vocab_size: int = 400, bos: bool = True) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on ``corpus``, with BOS added before every text (as Llama's) unless
    ``bos`` is False, EOS ``</s>`` and no pad token (the generation tasks must cope without one)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Whitespace words, one id each: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then ``words`` from 4 in order; BOS first."""
    vocab = {w: i for i, w in enumerate(SPECIALS + ["<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def save_tiny_decoder(path, corpus: list[str]) -> str:
    """A tiny random Llama and a BPE tokenizer trained on ``corpus``, saved together in ``path``."""
    tokenizer = bpe_tokenizer(corpus)
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
