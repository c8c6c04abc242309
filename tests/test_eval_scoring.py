"""Packed rank classification == separate scoring; forced answers; batched greedy generation."""
from __future__ import annotations

import random

import pytest
import torch

import test_eval_support as S
from optiml_plugin.eval.config import EvalConfig
from optiml_plugin.eval.runner import evaluate
from optiml_plugin.eval.scoring import Tree, generate_all, score_separately, score_trees, tree_tensors


@pytest.fixture(scope="module")
def be():
    return S.backend(seed=1)


def _random_trees(n, rng):
    trees = []
    for _ in range(n):
        prompt = tuple(rng.randrange(4, 300) for _ in range(rng.randint(1, 20)))
        cands = tuple(tuple(rng.randrange(4, 300) for _ in range(rng.randint(1, 5))) + (2,)
                      for _ in range(rng.randint(2, 6)))
        trees.append(Tree(prompt, cands))
    return trees


def test_tree_mask_and_positions():
    ids, pos, mask, gpos, gtok = tree_tensors([Tree((5, 6, 7), ((8, 2), (9, 10, 2)))], pad_id=1)
    assert ids[0].tolist() == [5, 6, 7, 8, 2, 9, 10, 2]
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # each candidate restarts after the prompt
    m = mask[0]
    assert m[5, :3].all() and not m[5, 3:5].any() and m[5, 5]  # sees prompt, not candidate 1
    assert not m[2, 3:].any()  # prompt is causal
    assert gpos[0].tolist() == [2, 3, 2, 5, 6] and gtok[0].tolist() == [8, 2, 9, 10, 2]


def test_packed_scores_equal_separate_scores(be):
    trees = _random_trees(8, random.Random(0))
    packed = score_trees(be, trees, max_batch_tokens=200, max_batch_size=4)
    alone = score_separately(be, trees, max_batch_tokens=10_000, max_batch_size=8)
    for a, b in zip(packed, alone):
        assert a.lengths == b.lengths
        assert a.sums == pytest.approx(b.sums, abs=1e-4)
    # and against a plain forward of the model on each sequence without any custom mask
    t = trees[0]
    for c, got, last in zip(t.candidates, packed[0].sums, packed[0].last):
        seq = torch.tensor([t.prompt + c])
        with torch.no_grad():
            lp = be.model(input_ids=seq).logits[0].log_softmax(-1)
        want = sum(float(lp[len(t.prompt) - 1 + j, tok]) for j, tok in enumerate(c))
        assert got == pytest.approx(want, abs=1e-4)
        assert last == pytest.approx(float(lp[len(t.prompt) + len(c) - 2, c[-1]]), abs=1e-4)
    assert all(a.last == pytest.approx(b.last, abs=1e-4) for a, b in zip(packed, alone))


def _force(be, token_ids):
    """Replace the LM head by a constant bias: the model then always prefers `token_ids`."""
    vocab = be.model.config.vocab_size
    head = torch.nn.Linear(be.model.config.word_embed_proj_dim, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[list(token_ids)] = 12.0
    be.model.lm_head = head
    return be


@pytest.mark.parametrize("answer", ["maybe", "no"])
def test_rank_classification_with_forced_answer(tmp_path, answer):
    bench = S.write_bench(tmp_path / "bench", n=4)
    be = S.backend(seed=2)
    _force(be, set(be.encode(" " + answer)) | {be.eos_id})
    res = evaluate(EvalConfig(model=be, bench=str(bench), out_dir=str(tmp_path / "run"), shots=(0, 1),
                              levels=("heldout_categories",), max_new_tokens=4, progress=False,
                              charts=False))
    rte = [t for t in res["aggregate"]["benchmark_tasks"] if t["task"] == "rte"]
    # rte's references cycle through yes/no/maybe/true: exactly one of 4 instances has `answer`
    assert [t["score"] for t in rte] == [25.0, 25.0]
    assert {t["metrics"]["lm_eval_acc"] for t in rte} == {t["metrics"]["lm_eval_acc_norm"] for t in rte} == {25.0}
    assert set(res["scoring"]["rank_metrics"]) == {"accuracy", "lm_eval_acc", "lm_eval_acc_norm"}


def test_batched_generation_equals_one_by_one(be):
    rng = random.Random(3)
    prompts = [[2] + [rng.randrange(4, 300) for _ in range(rng.randint(1, 15))] for _ in range(5)]
    batched = generate_all(be, prompts, max_new_tokens=6, batch_size=3)
    single = [be.generate([p], 6)[0] for p in prompts]
    assert batched == single
    assert all(len(g) <= 6 for g in batched) and any(len(g) == 6 for g in batched)


def test_generation_stops_at_eos_and_max_tokens():
    be = S.backend(seed=4)
    _force(be, {be.eos_id})
    assert be.generate([[2, 10, 11], [2, 12]], 5) == [[], []]
    _force(be, {42})
    assert be.generate([[2, 10, 11], [2, 12]], 5) == [[42] * 5, [42] * 5]
