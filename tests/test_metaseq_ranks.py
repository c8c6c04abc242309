"""The plugin in real metaseq with two ranks on CPU: model parallel 2 equals model parallel 1, and
packed rows equal examples alone.

Runs only where metaseq is importable (see docs/metaseq.md for the environment); each rank is a
process started with the CPU stand-ins of tests/metaseq_cpu. The loss, the per-benchmark sums and
every parameter's gradient (model-parallel shards merged back with the converter's merge) must equal
one process's on the same model and batch: a gathered-logits bug shows as +ln 2 per token, and a
wrong gradient would hide behind Adam's scale invariance in logged losses alone.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import metaseq_cpu
import pytest
import torch

from optiml_plugin.metaseq.convert import merge_shards


pytestmark = [pytest.mark.metaseq,
              pytest.mark.skipif(not metaseq_cpu.has_metaseq(), reason=metaseq_cpu.SKIP_REASON)]
REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optiml_plugin.cli import main

    out = tmp_path_factory.mktemp("ranks") / "bench"
    assert main(["bench", "build", "--builtin", "--out", str(out)]) == 0
    return out


def _run(bench: Path, bpe: Path, out: Path, world: int, extra: List[str]) -> List[Dict]:
    out.mkdir(parents=True)
    port = _port()
    args = [str(bench), "--user-dir", str(REPO / "optiml_plugin"), "--task", "instruction_meta_learning",
            "--criterion", "target_only_cross_entropy", "--vocab-filename", str(bpe / "gpt2-vocab.json"),
            "--merges-filename", str(bpe / "gpt2-merges.txt"), "--tokens-per-sample", "128", "--eps", "64",
            "--arch", "transformer_lm_gpt2_tiny", "--decoder-layers", "2", "--decoder-embed-dim", "64",
            "--decoder-ffn-embed-dim", "128", "--decoder-attention-heads", "2", "--no-scale-embedding",
            "--share-decoder-input-output-embed", "--decoder-learned-pos", "--cpu",
            "--distributed-world-size", str(world), "--distributed-backend", "gloo",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
            "--use-sharded-state", "--batch-size", "4", "--seed", "3", "--optimizer", "adam", "--lr", "3e-3",
            "--dropout", "0", "--attention-dropout", "0", "--ddp-backend", "pytorch_ddp", *extra]
    env = {**os.environ, "OPTIML_GRAD_OUT": str(out), "ENABLE_NCCL_BASE_COLLECTIVES": "0", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "metaseq_cpu" / "grad_check.py"), *args,
                               "--distributed-rank", str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


def _assert_same_step(one: Dict, two: List[Dict]) -> None:
    """Model parallel 2's ranks train as `one` did: same model, loss, per-benchmark sums, every gradient."""
    assert [r["mp_size"] for r in two] == [2, 2]
    # documents come from segment ids alone (no --self-attn-doc-sep): packed rows score every target
    # token as each example does alone in a row of its own
    assert max(r["alone"]["max_diff"] for r in [one, *two]) < 1e-5
    for rank in two:
        assert rank["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert rank["benchmarks"] == pytest.approx(one["benchmarks"], rel=1e-5)
    full_params, merged_params = merge_shards([one["params"]]), merge_shards([r["params"] for r in two])
    assert all(torch.equal(full_params[k], merged_params[k]) for k in full_params)  # the same model
    full, merged = merge_shards([one["grads"]]), merge_shards([r["grads"] for r in two])
    assert set(full) == set(merged)
    scale = max(float(g.abs().max()) for g in full.values())
    for name, grad in full.items():
        # relative to the largest gradient: key biases have a zero gradient up to rounding (~1e-9)
        assert float((merged[name] - grad).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("normalization", ["token", "example"])
def test_model_parallel_2_equals_1(bench: Path, opt_bpe_dir: Path, tmp_path: Path, normalization: str) -> None:
    extra = ["--loss-normalization", normalization]
    one = _run(bench, opt_bpe_dir, tmp_path / "mp1", 1, extra)[0]
    two = _run(bench, opt_bpe_dir, tmp_path / "mp2", 2, extra + ["--model-parallel-size", "2"])
    _assert_same_step(one, two)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="xformers is not installed (see "
                    "docs/metaseq.md; its kernel runs as the CPU stand-in X1 of tests/metaseq_cpu)")
def test_xformers_attention_trains_as_the_dense_document_mask(bench: Path, opt_bpe_dir: Path, tmp_path: Path) -> None:
    """`--attn-variant xformers_default` at model parallel 2 (block-diagonal mask from segment ids)
    against the dense document mask at model parallel 1: the same step, and examples kept apart."""
    one = _run(bench, opt_bpe_dir, tmp_path / "dense", 1, [])[0]
    two = _run(bench, opt_bpe_dir, tmp_path / "xformers", 2, ["--model-parallel-size", "2",
                                                             "--attn-variant", "xformers_default"])
    assert all(r["attn_variant"] == "xformers_default" for r in two) and one["attn_variant"] == "default"
    _assert_same_step(one, two)


def test_converted_checkpoint_scores_as_metaseq(bench: Path, opt_bpe_dir: Path, tmp_path: Path) -> None:
    """`optiml eval convert-metaseq` on the model metaseq trains (gelu, tied, unscaled embeddings): the
    transformers model gives every target token the NLL metaseq's own forward gave it."""
    transformers = pytest.importorskip("transformers", reason="the converter writes a transformers model")
    from optiml_plugin.metaseq.convert import convert

    run = _run(bench, opt_bpe_dir, tmp_path / "mp2", 2, ["--model-parallel-size", "2"])
    parts = []
    for r, rank in enumerate(run):
        path = tmp_path / f"checkpoint-model_part-{r}.pt"
        torch.save({"model": rank["params"], "cfg": {"model": {
            "decoder_attention_heads": 2, "activation_fn": "gelu", "no_scale_embedding": True,
            "decoder_learned_pos": True}}}, path)
        parts.append(path)
    hf = transformers.OPTForCausalLM.from_pretrained(str(convert(parts, tmp_path / "hf"))).eval()
    alone = run[0]["alone"]
    src, target = alone["src"], alone["target"]
    with torch.no_grad():
        logits = hf(input_ids=src, attention_mask=src.ne(1).long()).logits.float()
    mask = target.ne(1)
    nll = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="none")
    assert float((nll - alone["nll"]).abs().max()) < 1e-4
