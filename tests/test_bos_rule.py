"""One BOS rule for training and evaluation: a target token gets the same log-probability in a packed
training row as when the evaluator scores that example.

Why: OPT opens every document with `</s>`; the evaluator scores `</s> prompt answer </s>`. Training used
to start each example at its first source token, with nothing before it, so the same tokens were scored
in two different contexts (measured: up to 3.49 nats apart). Now `</s>` opens every packed example too
(conventions.EXAMPLE_START_ID), the example attends to it and its positions start there.
"""
from __future__ import annotations

import torch

from optiml_plugin.data.packing import PackingConfig, make_item, pack
from optiml_plugin.data.pipeline import collate_blocks
from optiml_plugin.conventions import EXAMPLE_START_ID
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.eval.backends.hf import HFBackend
from optiml_plugin.eval.scoring import Tree, tree_tensors
from optiml_plugin.local.attention_backends import DocumentAttention
from optiml_plugin.local.model import build_model

PAIRS = [("Translate to French: the cat", "le chat"), ("", "plain pre-training text"),
         ("Is 7 odd? Answer yes or no.", "yes"), ("Reverse the word: stop", "pots")]


def test_packed_training_scores_equal_evaluation_scores() -> None:
    tok = OptTokenizer.builtin([s + " " + t for s, t in PAIRS] * 20, vocab_size=300)
    model = build_model("micro", vocab_size=tok.vocab_size, dropout=0.0, seed=0).eval()
    cfg = PackingConfig(tokens_per_sample=96, strategy="sequential")
    items = [make_item(*tok.encode_pair(s, t), cfg, index=i) for i, (s, t) in enumerate(PAIRS)]
    blocks = pack(items, cfg, pad_id=tok.pad_id)
    assert len(blocks) == 1 and len(blocks[0].indices) == len(PAIRS)   # all four in one row
    batch = collate_blocks(blocks, pad_id=tok.pad_id)
    attention = DocumentAttention("dense", torch.device("cpu"))
    attention.configure(model)
    with torch.no_grad():
        logits = model(**attention.model_inputs(batch), use_cache=False).logits.float().log_softmax(-1)
    train_lp = logits[0].gather(-1, batch["target_ids"][0][:, None])[:, 0]
    segments, mask = batch["segment_ids"][0], batch["loss_mask"][0]

    backend = HFBackend(model, tok)
    assert backend.prefix_ids == [EXAMPLE_START_ID]
    for k, (src, tgt) in enumerate(PAIRS, start=1):
        prompt = backend.prefix_ids + (backend.encode(src) if src else [])
        answer = backend.encode_target(src, tgt) + [backend.eos_id]
        ids, pos, att, gpos, gtok = tree_tensors([Tree(tuple(prompt), (tuple(answer),))], tok.pad_id)
        eval_lp = backend.token_logprobs(ids, pos, att, gpos, gtok)[0, :len(answer)].double()
        train_k = train_lp[mask & (segments == k)].double()
        assert train_k.shape == eval_lp.shape, (k, src)
        assert torch.allclose(train_k, eval_lp, atol=1e-5), (k, (train_k - eval_lp).abs().max())
