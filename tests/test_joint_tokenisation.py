"""Prompt and completion are tokenised as one text with the prompt's tokens masked (as the
official code does), checked on a SentencePiece-style (Metaspace) tokenizer built here, where
tokenising the completion on its own would give other tokens than the model sees."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from paraknow.core.data import IGNORE_INDEX, encode
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

RECORDS = [
    {"messages": [{"role": "user", "content": f"Question: what is {a} plus {b}?"},
                  {"role": "assistant", "content": f"Answer: {a} plus {b} is {a + b}. So the answer is {a + b}."}]}
    for a, b in [(12, 35), (7, 40), (21, 26), (3, 9)]
] + [{"prompt": "Say hello to the world", "completion": "Answer: hello world"}]


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    texts = [m["content"] for r in RECORDS for m in r.get("messages", [])] + \
        ["Answer: 47 Answer: hello world Question: say plus is the answer"] * 20
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                         show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = None
    return tok


def official_text(record, eos):
    """The official code's formatting, written out independently."""
    if "messages" in record:
        prompt = "".join(f"<|{m['role']}|>\n{m['content'].strip()}\n\n" for m in record["messages"][:-1])
        completion = record["messages"][-1]["content"].strip()
    else:
        prompt, completion = f"<|user|>\n{record['prompt'].strip()}\n\n", record["completion"].strip()
    prompt += "<|assistant|>\n"
    return prompt, prompt + completion + eos


def test_separate_tokenisation_would_differ(metaspace_tokenizer):
    tok = metaspace_tokenizer
    differs = 0
    for record in RECORDS:
        prompt, full = official_text(record, tok.eos_token)
        joint = tok(full)["input_ids"]
        separate = tok(prompt)["input_ids"] + tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        differs += joint != separate
        item = encode(tok, record)
        assert item.input_ids == joint
        n_prompt = len(tok(prompt)["input_ids"])
        assert item.labels == [IGNORE_INDEX] * n_prompt + joint[n_prompt:]
    assert differs == len(RECORDS)  # the case this guards against is real for this tokenizer


def test_sensitivity_equals_an_independent_computation(metaspace_tokenizer):
    tok = metaspace_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    got = compute_sensitivity(model, tok, RECORDS, SensitivityConfig(samples=len(RECORDS)))

    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for record in RECORDS:
        prompt, full = official_text(record, tok.eos_token)
        ids = torch.tensor([tok(full)["input_ids"]])
        labels = ids.clone()
        labels[0, :len(tok(prompt)["input_ids"])] = -100
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        for name, p in model.named_parameters():
            expected[name] += (p.detach() * p.grad).abs()
    model.zero_grad()
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-9)
