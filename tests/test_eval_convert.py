"""metaseq -> transformers conversion: 2 model-parallel shards merge into the reference model."""
from __future__ import annotations

import pytest
import torch

import test_eval_support as S
from optiml_plugin.cli import main
from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.backends.metaseq_convert import convert

HEADS = 4


def to_metaseq_shards(model, mp):
    """Split an HF OPT state dict the way metaseq/Megatron lays out model-parallel parts."""
    sd = {k[len("model."):]: v for k, v in model.state_dict().items() if k.startswith("model.")}
    shards = [{"decoder.version": torch.tensor([3.0])} for _ in range(mp)]
    for key, v in sd.items():
        name = key.replace("decoder.final_layer_norm.", "decoder.layer_norm.")
        for i, shard in enumerate(shards):
            if key == "decoder.embed_tokens.weight":
                shard[name] = v.chunk(mp, 0)[i].clone()
                shard["decoder.output_projection.weight"] = shard[name]
            elif ".self_attn.q_proj." in key:
                k, vv = sd[key.replace("q_proj", "k_proj")], sd[key.replace("q_proj", "v_proj")]
                shard[key.replace("q_proj", "qkv_proj")] = torch.cat(
                    [k.chunk(mp, 0)[i], vv.chunk(mp, 0)[i], v.chunk(mp, 0)[i]]).clone()
            elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
                continue
            elif key.endswith(("fc1.weight", "fc1.bias")):
                shard[name] = v.chunk(mp, 0)[i].clone()
            elif key.endswith(("fc2.weight", "out_proj.weight")):
                shard[name] = v.chunk(mp, 1)[i].clone()
            else:
                shard[name] = v.clone()
    return shards


def _save(shards, tmp_path, cfg=True):
    paths = []
    for i, sd in enumerate(shards):
        ckpt = {"model": sd}
        if cfg:
            ckpt["cfg"] = {"model": {"decoder_attention_heads": HEADS, "decoder_normalize_before": True,
                                     "activation_fn": "relu"}}
        p = tmp_path / f"checkpoint_last-model_part-{i}.pt"
        torch.save(ckpt, p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def reference():
    return S.tiny_opt(vocab_size=64, seed=5, max_positions=32)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("mp", [1, 2])
def test_shards_merge_to_the_reference_model(tmp_path, reference, mp):
    from transformers import OPTForCausalLM

    paths = _save(to_metaseq_shards(reference, mp), tmp_path)
    out = convert(list(reversed(paths)), tmp_path / "hf")  # order comes from model_part-N
    got = OPTForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.randint(4, 64, (2, 12))
    assert torch.allclose(_logits(got, ids), _logits(reference, ids), atol=1e-5)


def test_cli_converts_and_copies_tokenizer(tmp_path, reference, opt_bpe_dir):
    paths = _save(to_metaseq_shards(reference, 2), tmp_path, cfg=False)
    argv = ["eval", "convert-metaseq", *map(str, paths), "--out", str(tmp_path / "hf")]
    assert main(argv) == 2  # no cfg in the checkpoint: heads must be given
    assert main(argv + ["--num-heads", str(HEADS), "--tokenizer-dir", str(opt_bpe_dir)]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "gpt2-vocab.json").is_file()


def test_mismatched_shards_are_refused(tmp_path, reference):
    shards = to_metaseq_shards(reference, 2)
    shards[1]["decoder.embed_positions.weight"] = shards[1]["decoder.embed_positions.weight"] + 1
    with pytest.raises(ConfigError, match="replicated"):
        convert(_save(shards, tmp_path), tmp_path / "hf")
