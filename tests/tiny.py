"""Tiny models and data for the tests, built from configs (nothing is downloaded): a character-level
tokenizer, random Llama-family models, and a few seed records. Plain helpers, imported by the tests
(`from tiny import tiny_llama`); the fixtures built on them are in conftest.py.
"""
from __future__ import annotations

import string

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus the specials paraknow uses."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    chars = sorted(set(string.printable) - set(string.whitespace) | {" ", "\n"})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": specials[4:]})
    return tok


TOKENIZER = make_tokenizer()
VOCAB = len(TOKENIZER)


def tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, tied=False, seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         tie_word_embeddings=tied, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger random weights than the default init, so gradients are not tiny
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


SEED_RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}. So the answer is {a + b}."}]}
    for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8)]
] + [{"prompt": "Say hi", "completion": "hi there"}, {"text": "plain text sample"}]


def marked_map_file(path, size: int) -> None:
    """A cache sensitivity entry of exactly `size` bytes that carries paraknow's marker (a
    safetensors header with only metadata, padded with spaces as the format allows)."""
    import json
    from pathlib import Path

    from paraknow.core.cache import MARKER_FIELD, marker

    path = Path(path)
    header = json.dumps({"__metadata__": {MARKER_FIELD: json.dumps(marker("sensitivity", path.stem))}}).encode()
    assert size >= 8 + len(header), f"a marked map file takes at least {8 + len(header)} bytes"
    path.write_bytes(len(header + b" " * (size - 8 - len(header))).to_bytes(8, "little") + header
                     + b" " * (size - 8 - len(header)))
