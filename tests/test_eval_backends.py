"""Any AutoModelForCausalLM with its own tokenizer: a tiny GPT-2 loaded from a directory (the per-family
equivalences are in tests/test_families.py)."""
from __future__ import annotations

import random

import pytest
import torch

import eval_support as S
from optiml_plugin.eval.backends.hf import HFBackend
from optiml_plugin.eval.scoring import Tree, score_separately, score_trees


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(S.WORDS)] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(str(d))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                               eos_token_id=0, bos_token_id=0)).save_pretrained(str(d))
    return d


def test_auto_model_and_tokenizer(gpt2_dir):
    be = HFBackend.from_dir(gpt2_dir, device="cpu")
    # OPT ids absent: the model's own rules from its tokenizer_config.json (no BOS: EOS opens examples)
    assert be.tok.family == "gpt2" and be.prefix_ids == [0]
    assert be.eos_id == 0 and be.max_positions == 128
    assert be.decode(be.encode("the cat is red")) == "the cat is red"
    rng = random.Random(0)
    trees = [Tree(tuple(rng.randrange(1, 300) for _ in range(rng.randint(1, 12))),
                  tuple(tuple(rng.randrange(1, 300) for _ in range(rng.randint(1, 4))) + (0,)
                        for _ in range(4))) for _ in range(4)]
    packed = score_trees(be, trees, max_batch_size=4)
    alone = score_separately(be, trees, max_batch_size=1)
    for a, b in zip(packed, alone):
        assert a.sums == pytest.approx(b.sums, abs=1e-4)
    gen = be.generate([[5, 6, 7], [8]], 3)
    assert gen == [be.generate([[5, 6, 7]], 3)[0], be.generate([[8]], 3)[0]]
