"""Hugging Face models from tiny random local configs (nothing downloaded): tensorize, train with ARD, save, load."""

import warnings

import pytest
import torch

import bayestensor as bt
from _layers import prune_some

transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def _bert():
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _tensorize(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, summary = bt.tensorize(model, max_rank=6, min_params=1000)
    return model, summary, [str(w.message) for w in caught]


CASES = {
    # GPT-2: every Conv1D (attention c_attn / c_proj, MLP c_fc / c_proj) and the position embedding;
    # the LM head and wte, tied, stay dense
    "gpt2": (_gpt2, lambda ids: {"input_ids": ids, "labels": ids}, 2 * 4 + 1),
    # LLaMA: q/k/v/o (grouped-query k/v) and gate/up/down projections, the embedding and the LM head
    "llama": (_llama, lambda ids: {"input_ids": ids, "labels": ids}, 2 * 7 + 2),
    # BERT: every nn.Linear of the blocks and the pooler, and the word / position embeddings
    "bert": (_bert, lambda ids: {"input_ids": ids, "labels": ids[:, 0] % 3}, 2 * 6 + 1 + 2),
}


@pytest.mark.parametrize("case", CASES)
def test_hf_model_tensorizes_trains_prunes_saves_and_loads(case, tmp_path):
    build, batch, n_layers = CASES[case]
    torch.manual_seed(0)
    model, summary, messages = _tensorize(build())
    assert len(summary) == n_layers
    if case == "gpt2":
        assert {r["type"] for r in summary} == {"Conv1D", "Embedding"}
        assert any("lm_head (its parameter is shared" in m for m in messages)
        assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, 100, (64, 16), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ard = bt.ARD(model, opt, num_data=len(data), epochs=2)
    losses = []
    for step in range(25):
        ids = data[(step * 8) % 64 :][:8]
        loss = ard.loss(model(**batch(ids)).loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    prune_some(model)
    model.eval()
    ids = data[:4]
    want = model(**batch(ids)).logits
    bt.save(model, tmp_path / case)
    back = bt.load(tmp_path / case, model=_tensorize(build())[0])
    assert bt.ranks(back) == bt.ranks(model)
    torch.testing.assert_close(back(**batch(ids)).logits, want)
