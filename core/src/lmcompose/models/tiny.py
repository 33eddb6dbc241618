"""Tiny random models of every built-in architecture, for tests and the conformance suite.

The tokenizer is a byte-level BPE trained (deterministically) on the bundled sample text
and sample edits, so tests tokenize real words offline, with GPT-2-style leading spaces.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

    from lmcompose.models.handle import LM

TINY_ARCHITECTURES = ("llama", "gemma3", "gpt_neox", "gpt2", "gptj", "opt")
VOCAB_SIZE = 512
HIDDEN = 64
LAYERS = 2
MAX_POSITIONS = 256


class _Vocab(TypedDict):
    """What every tiny config takes: the vocabulary size and the special token's id."""

    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lmcompose.data import sample_path, sample_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [sample_text(), sample_path("sample_edits.jsonl").read_text()]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.model_max_length = MAX_POSITIONS
    return tok


def tiny_config(arch: str, vocab_size: int, special_id: int) -> PretrainedConfig:
    import transformers as tf

    common: _Vocab = {
        "vocab_size": vocab_size,
        "bos_token_id": special_id,
        "eos_token_id": special_id,
        "pad_token_id": special_id,
    }
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=MAX_POSITIONS,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            **common,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS,
            **common,
        )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=HIDDEN, n_inner=2 * HIDDEN, n_layer=LAYERS, n_head=4, n_positions=MAX_POSITIONS, **common
        )
    if arch == "gptj":
        return tf.GPTJConfig(
            n_embd=HIDDEN,
            n_inner=2 * HIDDEN,
            n_layer=LAYERS,
            n_head=4,
            n_positions=MAX_POSITIONS,
            rotary_dim=8,
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS,
            word_embed_proj_dim=HIDDEN,
            **common,
        )
    raise ValueError(f"no tiny config for {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")


def tiny_model(arch: str = "llama", seed: int = 0) -> LM:
    """A randomly initialized (seeded) tiny :class:`LM` of architecture ``arch``."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmcompose.models.arch import find_spec_for
    from lmcompose.models.handle import LM
    from lmcompose.plugins import get_architectures

    tok = tiny_tokenizer()
    config = tiny_config(arch, len(tok), tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    spec = find_spec_for(config.model_type, (e.load() for e in get_architectures().entries()))
    assert spec is not None, config.model_type
    return LM(model, tok, spec, name=f"tiny-{arch}", source=f"tiny:{arch}:{seed}")
