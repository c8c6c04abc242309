"""OPT, Llama, Mistral, Qwen2, Gemma and GPT-NeoX through the one tokenizer resolver, the packer, the document
masks, the trainer's loss and the evaluator: per family, on tiny tokenizers and models built in code.

What must hold per family: the tokenizer's BOS/EOS/pad ids and rules come from its files; a packed example
gives the logits of the model run on that example alone (max difference <= 1e-5 in fp32, every backend);
a target token's log-probability in a packed training row equals the evaluator's; rank classification
equals scoring each candidate alone; batched greedy generation equals `generate` on each prompt alone.
"""
from __future__ import annotations

import random

import pytest
import torch

import family_support as F
from optiml_plugin.attention import flex_attention_available
from optiml_plugin.data.packing import PackingConfig, make_item, pack
from optiml_plugin.data.pipeline import collate_blocks
from optiml_plugin.data.tokenizer import resolve_tokenizer
from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.backends.hf import HFBackend
from optiml_plugin.eval.scoring import Tree, score_separately, score_trees, tree_tensors
from optiml_plugin.local.attention_backends import DocumentAttention
from optiml_plugin.local.model import TargetLM, build_model

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
TOLERANCE = 1e-5
# family: (start, eos, pad, adds BOS) of its published tokenizer's conventions
RULES = {"opt": (2, 2, 1, False), "llama": (1, 2, 2, True), "mistral": (1, 2, 2, True),
         "qwen2": (0, 0, 0, False), "gemma": (2, 1, 0, True), "gpt_neox": (0, 0, 0, False)}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {f: resolve_tokenizer(F.write_tokenizer(f, root / f)) for f in F.FAMILIES}


@pytest.mark.parametrize("family", F.FAMILIES)
def test_tokenizer_rules_and_exact_boundary(family, tokenizers, tmp_path):
    tok = tokenizers[family]
    assert tok.family == family
    assert (tok.start_id, tok.eos_id, tok.pad_id, tok.specials.adds_bos) == RULES[family]
    for src, tgt in F.PAIRS:
        src_ids, tgt_ids = tok.encode_pair(src, tgt)
        joined = f"{src} {tgt}" if src else tgt          # the authors' joined text
        assert src_ids + tgt_ids == tok.encode(joined), (src, tgt)   # no boundary token moves
        assert tok.decode(src_ids + tgt_ids) == joined
        assert tok.encode_target(src, tgt) == tgt_ids
    # a special token's text inside an example is text, never the special id (the tiny SentencePiece-style
    # vocabularies have no byte fallback: unknown characters are <unk>, which separates nothing)
    text = "a </s> <s> <eos> <bos> <pad> <|endoftext|> <|padding|> b"
    assert not set(tok.encode(text)) & {tok.bos_id, tok.eos_id, tok.pad_id, tok.start_id}
    again = resolve_tokenizer(tok.save(tmp_path / "saved").parent)   # the run's saved copy: same rules
    assert again.specials == tok.specials


def _batch(tok, pairs, tokens_per_sample=96):
    cfg = PackingConfig(tokens_per_sample=tokens_per_sample, strategy="sequential")
    items = [make_item(*tok.encode_pair(s, t), cfg, index=i, eos_id=tok.eos_id, start_id=tok.start_id)
             for i, (s, t) in enumerate(pairs)]
    blocks = pack(items, cfg, pad_id=tok.pad_id)
    assert len(blocks) == 1 and len(blocks[0].indices) == len(pairs)
    return collate_blocks(blocks, pad_id=tok.pad_id), items


def _backends():
    return ["per_example", "dense"] + (["flex_forward"] if flex_attention_available() else [])


def _packed_logits(model, backend, batch):
    if backend == "flex_forward":  # CPU FlexAttention has no backward: forward only, under no_grad
        da = DocumentAttention("dense", torch.device("cpu"))
        da.backend = "flex"
    else:
        da = DocumentAttention(backend, torch.device("cpu"))
    da.configure(model)
    with torch.no_grad():
        return model(**da.model_inputs(batch), use_cache=False).logits


def packed_vs_alone(family, tok, backend):
    """Max |logit difference| between each packed example and the model run on that example alone."""
    model = F.tiny_model(family, tok)
    batch, items = _batch(tok, F.PAIRS)
    packed = _packed_logits(model, backend, batch)
    model.config._attn_implementation = "sdpa"
    worst, at = 0.0, 0
    for item in items:
        with torch.no_grad():
            alone = model(input_ids=torch.as_tensor(item.tokens)[None], use_cache=False).logits
        n = len(item)
        worst = max(worst, float((packed[0, at:at + n] - alone[0]).abs().max()))
        at += n
    return worst


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("family", F.FAMILIES)
def test_packed_example_equals_the_example_alone(family, backend, tokenizers):
    assert packed_vs_alone(family, tokenizers[family], backend) <= TOLERANCE


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_attention_packs_exactly(family, backend, tokenizers):
    """Fewer key/value heads than query heads (TinyLlama, Mistral, Qwen2 checkpoints)."""
    tok = tokenizers[family]
    model = build_model("micro", family=family, vocab_size=tok.vocab_size, dropout=0.0, seed=0,
                        overrides={"num_attention_heads": 4, "num_key_value_heads": 2})
    batch, items = _batch(tok, F.PAIRS)
    packed = _packed_logits(model, backend, batch)
    model.config._attn_implementation = "sdpa"
    at = 0
    for item in items:
        with torch.no_grad():
            alone = model(input_ids=torch.as_tensor(item.tokens)[None], use_cache=False).logits
        assert float((packed[0, at:at + len(item)] - alone[0]).abs().max()) <= TOLERANCE
        at += len(item)


@pytest.mark.parametrize("family", F.FAMILIES)
def test_plain_causal_rows_would_leak(family, tokenizers):
    """The control: the same row with one causal mask over all examples and positions counting on."""
    tok = tokenizers[family]
    model = F.tiny_model(family, tok)
    batch, items = _batch(tok, F.PAIRS)
    n = len(items[0]) + len(items[1]) + len(items[2])
    with torch.no_grad():
        whole = model(input_ids=batch["input_ids"][:, :n], use_cache=False).logits
        alone = model(input_ids=torch.as_tensor(items[2].tokens)[None], use_cache=False).logits
    assert float((whole[0, n - len(items[2]):n] - alone[0]).abs().max()) > 1e-2
    # and the 'causal' backend (the benchmarks' baseline) is that, with restarting positions: not masked behind
    # its back by transformers' own packed-sequence detection
    assert packed_vs_alone(family, tok, "causal") > 1e-2


@pytest.mark.parametrize("family", F.FAMILIES)
def test_trainer_loss_and_gradients_per_backend(family, tokenizers):
    """The trainer's fused target loss through per_example equals dense's, gradients included."""
    tok = tokenizers[family]
    batch, _ = _batch(tok, F.PAIRS)
    grads, nlls = [], []
    for backend in ("per_example", "dense"):
        model = F.tiny_model(family, tok).train()
        da = DocumentAttention(backend, torch.device("cpu"))
        da.configure(model)
        loss, nll = TargetLM(model)(batch["loss_mask"], batch["target_ids"], **da.model_inputs(batch))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        nlls.append(nll.detach())
    assert torch.allclose(nlls[0], nlls[1], atol=TOLERANCE)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("family", F.FAMILIES)
def test_training_scores_equal_evaluation_scores(family, tokenizers):
    """The BOS rule per family: the evaluator's prompt opens with the same token as a packed example."""
    tok = tokenizers[family]
    model = F.tiny_model(family, tok)
    batch, _ = _batch(tok, F.PAIRS)
    da = DocumentAttention("dense", torch.device("cpu"))
    da.configure(model)
    with torch.no_grad():
        logp = model(**da.model_inputs(batch), use_cache=False).logits.float().log_softmax(-1)
    train_lp = logp[0].gather(-1, batch["target_ids"][0][:, None])[:, 0]
    segments, mask = batch["segment_ids"][0], batch["loss_mask"][0]
    backend = HFBackend(model, tok)
    assert backend.prefix_ids == [tok.start_id]
    for k, (src, tgt) in enumerate(F.PAIRS, start=1):
        prompt = backend.prefix_ids + (backend.encode(src) if src else [])
        answer = backend.encode_target(src, tgt) + [backend.eos_id]
        ids, pos, att, gpos, gtok = tree_tensors([Tree(tuple(prompt), (tuple(answer),))], tok.pad_id)
        eval_lp = backend.token_logprobs(ids, pos, att, gpos, gtok)[0, :len(answer)]
        assert float((train_lp[mask & (segments == k)] - eval_lp).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("family", F.FAMILIES)
def test_rank_classification_and_greedy_generation(family, tokenizers, tmp_path):
    tok = tokenizers[family]
    d = F.write_tokenizer(family, tmp_path / "model")
    F.tiny_model(family, tok).save_pretrained(str(d))
    backend = HFBackend.from_dir(d, device="cpu")             # the checkpoint directory, as `optiml eval` reads it
    assert backend.prefix_ids == [tok.start_id] and backend.eos_id == tok.eos_id
    rng = random.Random(0)
    words = range(5, tok.vocab_size)
    trees = [Tree(tuple(backend.prefix_ids) + tuple(rng.choice(words) for _ in range(rng.randint(1, 12))),
                  tuple(tuple(rng.choice(words) for _ in range(rng.randint(1, 4))) + (tok.eos_id,)
                        for _ in range(4))) for _ in range(5)]
    packed = score_trees(backend, trees, max_batch_size=4)
    alone = score_separately(backend, trees, max_batch_size=1)
    worst = max(abs(a - b) for p, s in zip(packed, alone) for a, b in zip(p.sums, s.sums))
    assert worst <= TOLERANCE
    prompts = [[tok.start_id] + backend.encode("what color is the cat"), [tok.start_id, 7],
               [tok.start_id] + backend.encode("hello world")]
    batched = backend.generate(prompts, 6)
    for prompt, got in zip(prompts, batched):
        with torch.no_grad():
            out = backend.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                         num_beams=1, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        alone_ids = out[0, len(prompt):].tolist()
        want = alone_ids[:alone_ids.index(tok.eos_id)] if tok.eos_id in alone_ids else alone_ids
        assert got == want, (family, prompt)


def test_overrides_and_attention_dropout_are_honored(tmp_path):
    model = build_model("micro", family="llama", vocab_size=300, attention_dropout=0.2)
    assert {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")} == {0.2}
    model = build_model("micro", family="opt", vocab_size=300, overrides={"attention_dropout": 0.3})
    assert model.model.decoder.layers[0].self_attn.dropout == 0.3   # used to be a TypeError
    model = build_model("micro", family="gpt_neox", vocab_size=300, dropout=0.25,
                        overrides={"num_hidden_layers": 3, "attention_dropout": 0.1})
    assert (model.config.hidden_dropout, model.config.num_hidden_layers, model.config.attention_dropout) == \
        (0.25, 3, 0.1)
    with pytest.raises(ConfigError, match="model.overrides: LlamaConfig has no field 'atention_dropout'"):
        build_model("micro", family="llama", vocab_size=300, overrides={"atention_dropout": 0.1})
    with pytest.raises(ConfigError, match="unknown family"):
        build_model("micro", family="bert", vocab_size=300)
    # attention dropout acts in training on the per_example path (and not in eval)
    model = build_model("micro", family="llama", vocab_size=300, attention_dropout=0.5, seed=0)
    tok_batch = {"input_ids": torch.randint(5, 300, (1, 12)), "segment_ids": torch.ones(1, 12, dtype=torch.long),
                 "position_ids": torch.arange(12)[None]}
    da = DocumentAttention("per_example", torch.device("cpu"))
    da.configure(model)
    outs = []
    for train in (True, True, False, False):
        model.train(train)
        with torch.no_grad():
            outs.append(model(**da.model_inputs(tok_batch), use_cache=False).logits)
    assert not torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])


def test_config_file_random_init_and_exactness_guards(tmp_path):
    from transformers import MistralConfig

    MistralConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, sliding_window=64).save_pretrained(str(tmp_path / "cfg"))
    model = build_model(config=str(tmp_path / "cfg" / "config.json"), vocab_size=300, attention_dropout=0.1)
    assert type(model).__name__ == "MistralForCausalLM" and model.config.attention_dropout == 0.1
    with pytest.raises(ConfigError, match="sliding-window attention"):   # a 64-token window on 96-token rows
        DocumentAttention("per_example", torch.device("cpu")).configure(model, 97)
    DocumentAttention("per_example", torch.device("cpu")).configure(model, 64)
    with pytest.raises(ConfigError, match="vocab_size 320 but the tokenizer needs 400"):
        build_model(config=str(tmp_path / "cfg"), vocab_size=400)
    with pytest.raises(ConfigError, match="exactly one"):
        build_model(preset="micro", config=str(tmp_path / "cfg"), vocab_size=300)
    from transformers import Gemma2Config

    Gemma2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16).save_pretrained(str(tmp_path / "gemma2"))
    with pytest.raises(ConfigError, match=r"transforms its logits \(final_logit_softcapping\)"):
        build_model(config=str(tmp_path / "gemma2"), vocab_size=300)   # the fused target loss would be wrong


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from bench_factory import make_bench

    return make_bench(tmp_path_factory.mktemp("bench") / "bench", [
        dict(benchmark="b1", category="c1", task="t1", n=40),
        dict(benchmark="b2", category="c2", task="t2", n=30),
        dict(benchmark="b1", category="c1", task="t1", n=6, split="valid_heldout_instances")])


def _llama_run(bench, out, checkpoint, **run):
    from bench_factory import micro_train_config

    return micro_train_config(bench, out, model={"preset": None, "checkpoint": str(checkpoint), "dropout": 0.1,
                                                 "attention_dropout": 0.1},
                              data={"tokenizer": "model"}, run=run)


def test_llama_checkpoint_trains_saves_in_its_format_and_resumes_exactly(bench, tmp_path):
    """`optiml train` on a local Llama directory: its own tokenizer and BOS rule, attention dropout on, the final
    model loadable by AutoModelForCausalLM and the evaluator, and a resumed run equal to an uninterrupted one."""
    from transformers import AutoModelForCausalLM

    from optiml_plugin.local.trainer import Trainer, read_log

    start = F.write_tokenizer("llama", tmp_path / "llama")
    F.tiny_model("llama", resolve_tokenizer(start)).save_pretrained(str(start))
    full = Trainer(_llama_run(bench, tmp_path / "full", start))
    assert full.tokenizer.family == "llama" and full.tokenizer.start_id == 1
    row = next(iter(full.data.validation.values())).batches[0]
    seg = row["segment_ids"][0]
    starts = torch.cat([torch.tensor([True]), seg[1:] != seg[:-1]]) & (seg > 0)
    assert set(row["input_ids"][0][starts].tolist()) == {1}   # every packed example opens with Llama's <s>
    full.train()
    cut = Trainer(_llama_run(bench, tmp_path / "cut", start))
    cut.train(until=3)
    del cut
    resumed = Trainer(_llama_run(bench, tmp_path / "cut", start), resume=True)
    assert resumed.step == 3
    resumed.train()
    losses = [[r["loss"] for r in read_log(tmp_path / run / "log.jsonl") if "split" not in r]
              for run in ("full", "cut")]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    a, b = (AutoModelForCausalLM.from_pretrained(str(tmp_path / run / "final")) for run in ("full", "cut"))
    assert type(a).__name__ == "LlamaForCausalLM"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a.lm_head.weight, full.lm.lm_head.weight.detach())
    backend = HFBackend.from_dir(tmp_path / "full" / "final", device="cpu")
    assert backend.tok.family == "llama" and backend.prefix_ids == [1]


def test_family_presets_train_from_random_init(bench, tmp_path):
    """A family-neutral preset as GPT-NeoX with the builtin tokenizer: trains, saves as GPTNeoXForCausalLM."""
    from bench_factory import micro_train_config
    from transformers import AutoModelForCausalLM

    from optiml_plugin.local.trainer import Trainer

    trainer = Trainer(micro_train_config(bench, tmp_path / "run", model={"family": "gpt_neox"},
                                         optim={"lr": 1e-2, "max_update": 8}))
    before = trainer.validate()["valid_heldout_instances"]["loss"]
    final = trainer.train()
    assert trainer.validate()["valid_heldout_instances"]["loss"] < before
    assert type(AutoModelForCausalLM.from_pretrained(str(final))).__name__ == "GPTNeoXForCausalLM"
    with pytest.raises(ConfigError, match="'builtin' trains new ids"):
        Trainer(micro_train_config(bench, tmp_path / "bad", model={"preset": None, "checkpoint": str(final)}))


def test_one_resolver_serves_every_call_site(tokenizers, tmp_path):
    """The local trainer, the metaseq task and the evaluator read a tokenizer through `resolve_tokenizer`; the
    metaseq task (OPT's dictionary) refuses another family's by name, the others take its rules."""
    from optiml_plugin.local.data import load_tokenizer
    from optiml_plugin.metaseq.wiring import load_tokenizer as metaseq_tokenizer
    from optiml_plugin.recipe import DataConfig

    llama = F.write_tokenizer("llama", tmp_path / "llama")
    opt = tokenizers["opt"].save(tmp_path / "opt")
    assert metaseq_tokenizer(None, None, str(opt)).family == "opt"
    with pytest.raises(ConfigError, match="the metaseq task needs OPT's BPE with OPT's ids; this is a llama"):
        metaseq_tokenizer(None, None, str(llama / "tokenizer.json"))
    local = load_tokenizer(DataConfig(tokenizer="model"), bench=None, checkpoint=str(llama))
    assert local.specials == tokenizers["llama"].specials
    with pytest.raises(ConfigError, match="'model' takes the tokenizer of model.checkpoint"):
        load_tokenizer(DataConfig(tokenizer="model"), bench=None)
    with pytest.raises(ConfigError, match="data.tokenizer: '/nowhere' is neither 'builtin' nor a tokenizer"):
        load_tokenizer(DataConfig(tokenizer="/nowhere"), bench=None)
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="SentencePiece tokenizer.model: write tokenizer.json once"):
        resolve_tokenizer(tmp_path / "spm")


@pytest.mark.parametrize("family", [f for f in F.FAMILIES if f != "opt"])
def test_rules_agree_with_transformers_tokenizer(family, tokenizers, tmp_path):
    """Where a family adds BOS, transformers' own tokenizer of the saved directory adds the same token."""
    from transformers import AutoTokenizer

    tok = tokenizers[family]
    auto = AutoTokenizer.from_pretrained(str(tok.save(tmp_path / "saved").parent))
    for src, _ in F.PAIRS:
        want = ([tok.bos_id] if tok.specials.adds_bos else []) + tok.encode(src)
        assert list(auto(src)["input_ids"]) == want, (family, src)
    assert auto.eos_token_id == tok.eos_id
