"""Packed rows on a tiny OPT reproduce each example run alone, for every attention backend here.

Why: packing is only valid if no example sees another and positions restart per example (OPT's
learned positions are offset by 2 inside transformers, so 0-based restarting ids must match an
unpacked run). Also: changing one example leaves the other examples' losses unchanged.
"""
from __future__ import annotations

import pytest
import torch

from optiml_plugin.attention import flex_attention_available, position_ids_from_segments
from optiml_plugin.local.attention_backends import DocumentAttention, row_spans, span_buckets
from optiml_plugin.local.model import TargetLM, build_model
from loss_reference import target_cross_entropy

VOCAB = 300
# the CPU forward check of FlexAttention runs it eagerly on purpose (compiling needs a GPU toolchain)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _backends():
    names = ["per_example", "dense"]
    if flex_attention_available():
        names.append("flex_forward")  # CPU FlexAttention has no backward: forward equivalence only
    return names


def _packed(examples, length):
    """One row holding `examples` back to back, then padding; targets = next token inside each example."""
    ids, seg, tgt, mask = [], [], [], []
    for k, ex in enumerate(examples, start=1):
        ids += ex.tolist()
        seg += [k] * len(ex)
        tgt += ex[1:].tolist() + [1]
        mask += [True] * (len(ex) - 1) + [False]
    pad = length - len(ids)
    ids += [1] * pad
    seg += [0] * pad
    tgt += [1] * pad
    mask += [False] * pad
    seg_t = torch.tensor([seg])
    return {"input_ids": torch.tensor([ids]), "segment_ids": seg_t, "target_ids": torch.tensor([tgt]),
            "loss_mask": torch.tensor([mask]), "position_ids": position_ids_from_segments(seg_t)}


def _model():
    return build_model("micro", vocab_size=VOCAB, dropout=0.0, seed=0).eval()


def _logits(model, backend, batch):
    if backend == "flex_forward":
        da = DocumentAttention("dense", torch.device("cpu"))
        da.backend = "flex"  # bypass the backward check: forward only, under no_grad
    else:
        da = DocumentAttention(backend, torch.device("cpu"))
    da.configure(model)
    with torch.no_grad():
        return model(**da.model_inputs(batch), use_cache=False).logits


def _examples(seed=0, lengths=(7, 12, 5, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("backend", _backends())
def test_packed_logits_and_losses_equal_each_example_alone(backend):
    model = _model()
    examples = _examples()
    batch = _packed(examples, 40)
    packed = _logits(model, backend, batch)
    at = 0
    for k, ex in enumerate(examples, start=1):
        alone = _logits(model, "causal", _packed([ex], len(ex)))
        assert torch.allclose(packed[0, at:at + len(ex)], alone[0], atol=1e-5), f"example {k} via {backend}"
        alone_loss = target_cross_entropy(alone, _packed([ex], len(ex))["target_ids"],
                                          _packed([ex], len(ex))["loss_mask"]).loss()
        seg_mask = batch["loss_mask"] & (batch["segment_ids"] == k)
        packed_loss = target_cross_entropy(packed, batch["target_ids"], seg_mask).loss()
        assert abs(float(packed_loss) - float(alone_loss)) < 1e-5
        at += len(ex)
    assert torch.isfinite(packed).all()


@pytest.mark.parametrize("backend", _backends())
def test_changing_one_example_leaves_the_others_unchanged(backend):
    model = _model()
    examples = _examples(1)
    changed = list(examples)
    changed[1] = torch.randint(4, VOCAB, (12,), generator=torch.Generator().manual_seed(99))
    a, b = _packed(examples, 40), _packed(changed, 40)
    la, lb = _logits(model, backend, a), _logits(model, backend, b)
    for k in (1, 3, 4):
        ma = a["loss_mask"] & (a["segment_ids"] == k)
        loss_a = target_cross_entropy(la, a["target_ids"], ma).loss()
        loss_b = target_cross_entropy(lb, b["target_ids"], ma).loss()
        assert abs(float(loss_a) - float(loss_b)) < 1e-6, f"example {k} moved when example 2 changed"
    m2 = a["loss_mask"] & (a["segment_ids"] == 2)
    assert abs(float(target_cross_entropy(la, a["target_ids"], m2).loss())
               - float(target_cross_entropy(lb, b["target_ids"], m2).loss())) > 1e-4


def test_plain_causal_attention_leaks_across_examples():
    """The control: without the document mask the second example's logits do change."""
    model = _model()
    examples = _examples(2)
    packed = _logits(model, "causal", _packed(examples, 40))
    alone = _logits(model, "causal", _packed([examples[1]], len(examples[1])))
    n0 = len(examples[0])
    assert not torch.allclose(packed[0, n0:n0 + len(examples[1])], alone[0], atol=1e-3)


def _grads(backend, batch):
    """All parameter gradients of one target-only loss backward through `backend`'s masks."""
    model = _model().train()
    da = DocumentAttention(backend, torch.device("cpu"))
    da.configure(model)
    logits = model(**da.model_inputs(batch), use_cache=False).logits
    target_cross_entropy(logits, batch["target_ids"], batch["loss_mask"]).loss().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_per_example_gradients_match_dense():
    """Training needs the backward: per_example and dense masks give the same gradients."""
    examples = _examples(3)
    batch = _packed(examples, 40)
    assert torch.allclose(_grads("per_example", batch), _grads("dense", batch), atol=1e-5)


def test_row_spans_cover_examples_and_padding():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert row_spans(seg) == [[(0, 2), (2, 5), (5, 7)], [(0, 7)]]


def _two_rows(examples_a, examples_b, length):
    a, b = _packed(examples_a, length), _packed(examples_b, length)
    return {k: torch.cat([a[k], b[k]]) for k in a}


def test_per_example_groups_padded_examples_across_rows_exactly():
    """Nearly equal lengths (20/19, 11/10) share a right-padded SDPA group across rows: logits still equal
    each example alone, and gradients equal the dense mask's."""
    ex = _examples(4, lengths=(20, 11, 19, 10))
    batch = _two_rows([ex[0], ex[1]], [ex[2], ex[3]], 36)
    groups = row_spans(batch["segment_ids"])
    assert span_buckets(groups, 36, torch.device("cpu")).shapes[:2] == [(2, 20), (2, 11)]
    model = _model()
    packed = _logits(model, "per_example", batch)
    for row, (first, second) in enumerate(((ex[0], ex[1]), (ex[2], ex[3]))):
        for at, e in ((0, first), (len(first), second)):
            alone = _logits(model, "causal", _packed([e], len(e)))
            assert torch.allclose(packed[row, at:at + len(e)], alone[0], atol=1e-5)
    assert torch.allclose(_grads("per_example", batch), _grads("dense", batch), atol=1e-5)


def test_span_buckets_gather_then_scatter_is_identity():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 2]])
    plan = span_buckets(row_spans(seg), 6, torch.device("cpu"), ratio=2.0)
    tokens = torch.arange(12)
    assert torch.equal(tokens[plan.gather][plan.scatter], tokens)
    assert sum(n * longest for n, longest in plan.shapes) == plan.gather.numel()


def test_target_lm_fused_head_matches_full_logits_loss_and_gradients():
    """The trainer's TargetLM (output projection + cross entropy fused, target rows only) gives the loss, the
    per-target NLL and every parameter gradient of the plain path (full logits, then the target-only loss)."""
    batch = _packed(_examples(4), 40)
    plain = _grads("per_example", batch)
    model = _model().train()
    da = DocumentAttention("per_example", torch.device("cpu"))
    da.configure(model)
    n = int(batch["loss_mask"].sum())
    loss, nll = TargetLM(model)(batch["loss_mask"], batch["target_ids"], **da.model_inputs(batch))
    (loss / n).backward()
    fused = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    with torch.no_grad():
        logits = model(**da.model_inputs(batch), use_cache=False).logits
    ref = torch.nn.functional.cross_entropy(logits[batch["loss_mask"]], batch["target_ids"][batch["loss_mask"]],
                                            reduction="none")
    assert nll.shape == (n,) and torch.allclose(nll, ref, atol=1e-5)
    assert torch.allclose(fused, plain, atol=1e-6)
