"""Packed rank classification == separate scoring; forced answers; batched greedy generation."""
from __future__ import annotations

import json
import random

import pytest
import torch

import eval_support as S
from optiml_plugin.errors import BadRecordError, ConfigError
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


def test_per_task_metric_and_shots_default_to_the_papers(tmp_path, be):
    bench = S.write_bench(tmp_path / "bench", n=3)
    manifest = json.loads((bench / "manifest.json").read_text())
    for t in manifest["tasks"]:
        if t["task"] == "task001_color":
            t["category"] = "Summarization"
    (bench / "manifest.json").write_text(json.dumps(manifest))

    def run(split, **kw):
        cfg = EvalConfig(model=be, bench=str(bench), out_dir=str(tmp_path / split), split=split, shots=(0, 1),
                         max_per_task=2, max_new_tokens=2, progress=False, charts=False, **kw)
        res = evaluate(cfg)
        preds = [json.loads(line) for line in (tmp_path / split / "predictions.jsonl").read_text().splitlines()]
        return res, {(p["task"], p["shots"]): p["kind"] for p in preds}

    # test: accuracy where there are candidates; summarization 0-shot only
    res, kinds = run("test")
    assert kinds[("rte", 0)] == kinds[("sst2", 1)] == "rank" and kinds[("task002_translate", 1)] == "generate"
    assert ("task001_color", 0) in kinds and ("task001_color", 1) not in kinds
    assert res["counts"]["not_run_at_shots"] == {"niv2/task001_color": 2}
    # valid: the paper scores dev tasks by generation (Rouge-L)
    _, kinds = run("valid")
    assert kinds[("rte", 0)] == kinds[("sst2", 1)] == "generate"
    # settings override both, and may add a shot count
    _, kinds = run("test", task_settings={"rte": {"metric": "rougeL"}, "task001_color": {"shots": [0, 1]},
                                          "sst2": {"shots": [2]}})
    assert kinds[("rte", 0)] == "generate" and ("task001_color", 1) in kinds
    assert ("sst2", 2) in kinds and ("sst2", 0) not in kinds and ("rte", 2) not in kinds
    with pytest.raises(BadRecordError, match="no_candidates|no candidates"):
        run("test", task_settings={"task001_color": {"metric": "accuracy"}})
    with pytest.raises(ConfigError, match="metric"):
        run("test", task_settings={"rte": {"metric": "bleu"}})


def test_a_task_settings_file_goes_through_the_schema(tmp_path):
    """`--task-settings` is a file the user writes: the recipe's schema rules check it, and an error names
    the file, the line and the key (it was a hand-written check naming neither)."""
    from optiml_plugin.commands.eval import _task_file

    path = tmp_path / "settings.json"
    path.write_text('{\n  "rte": {"metric": "rougeL"},\n  "sst2": {"shots": [0, -2]}\n}\n')
    with pytest.raises(ConfigError, match=r"settings\.json:3: sst2\.shots\.1: Input should be greater than or equal"):
        _task_file(str(path), "--task-settings", "settings")
    path.write_text('{"rte": {"metric": "rougeL"}, "sst2": {"shots": [2]}}')
    assert _task_file(str(path), "--task-settings", "settings") == {"rte": {"metric": "rougeL"},
                                                                    "sst2": {"shots": [2]}}
    path.write_text('{"rte": {"metrics": "rougeL"}}')
    with pytest.raises(ConfigError, match=r"rte\.metrics: unknown key"):
        _task_file(str(path), "--task-settings", "settings")


def test_generation_ends_at_a_stop_string_not_at_the_cap():
    be = S.backend(seed=4)
    tok = next(t for t in range(4, 300) if be.decode([t]).strip())
    text = be.decode([tok]).strip()
    _force(be, {tok})   # the model writes `text` forever, and never `</s>`
    assert be.generate([[2, 10, 11], [2, 12]], 12) == [[tok] * 12] * 2
    assert be.generate([[2, 10, 11], [2, 12]], 12, ("zzz", text)) == [[tok]] * 2
    assert be.generate([[2, 10, 11]], 12, (text + text,)) == [[tok] * 2]
    assert generate_all(be, [[2, 10, 11], [2, 12]], 12, 2, stop_strings=(text,)) == [[tok]] * 2


def test_each_task_gets_a_cap_from_its_references_outside_the_evaluated_split(tmp_path):
    """An untrained model rarely ends its answer: each generated task's cap is twice its longest reference
    (from its training rows, else its other evaluation split), within max_new_tokens, recorded with the
    stops and how every generation ended."""
    be = S.backend(seed=4)
    _force(be, {next(t for t in range(4, 300) if be.decode([t]).strip())})
    bench = S.write_bench(tmp_path / "bench", n=3)
    cfg = EvalConfig(model=be, bench=str(bench), out_dir=str(tmp_path / "o"), split="test", shots=(0,),
                     max_per_task=2, max_new_tokens=256, progress=False, charts=False)
    res = evaluate(cfg)
    gen = res["generation"]
    task = gen["tasks"]["niv2/task001_color"]
    assert task["references_from"] == "valid_heldout_tasks" and 2 <= task["longest_reference"] < 40
    assert task["max_new_tokens"] == 2 * task["longest_reference"] + 1 < 256
    assert task["stops"] == ["\n\n"]
    preds = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    ran = [p for p in preds if p["kind"] == "generate"]
    assert ran and all(p["new_tokens"] <= p["max_new_tokens"] < 256 and p["stopped"] == "cap" for p in ran)
    assert gen["stopped"] == {"cap": len(ran)}
    off = evaluate(EvalConfig(model=be, bench=str(bench), out_dir=str(tmp_path / "p"), split="test", shots=(0,),
                              max_per_task=1, max_new_tokens=20, cap_multiple=0, progress=False, charts=False))
    assert {t["max_new_tokens"] for t in off["generation"]["tasks"].values()} == {20}
