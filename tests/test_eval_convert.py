"""metaseq -> transformers conversion: 2 model-parallel shards merge into the reference model."""
from __future__ import annotations

import pytest
import torch

import eval_support as S
from optiml_plugin.cli import main
from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq.convert import convert

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
                                     "activation_fn": "relu", "no_scale_embedding": True,
                                     "decoder_learned_pos": True}}
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
    assert main(argv + ["--num-heads", str(HEADS)]) == 2  # nor does it say the embeddings are unscaled
    assert main(argv + ["--num-heads", str(HEADS), "--no-scale-embedding", "--tokenizer-dir", str(opt_bpe_dir)]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "gpt2-vocab.json").is_file()


def test_mismatched_shards_are_refused(tmp_path, reference):
    shards = to_metaseq_shards(reference, 2)
    shards[1]["decoder.embed_positions.weight"] = shards[1]["decoder.embed_positions.weight"] + 1
    with pytest.raises(ConfigError, match="replicated"):
        convert(_save(shards, tmp_path), tmp_path / "hf")


# ---- exactness against a forward computed from the metaseq state dict itself ----------------------

D, FFN, LAYERS, VOCAB_SIZE, POSITIONS = 16, 32, 2, 40, 24


def metaseq_state_dict(seed: int, tied: bool) -> dict:
    """A random singleton checkpoint in metaseq main's naming (separate q/k/v projections)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    sd = {"decoder.embed_tokens.weight": w(VOCAB_SIZE, D), "decoder.embed_positions.weight": w(POSITIONS + 2, D),
          "decoder.layer_norm.weight": 1 + w(D), "decoder.layer_norm.bias": w(D)}
    sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"] if tied else w(VOCAB_SIZE, D)
    for i in range(LAYERS):
        pre = f"decoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[pre + f"self_attn.{name}.weight"], sd[pre + f"self_attn.{name}.bias"] = w(D, D), w(D)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            sd[pre + ln + ".weight"], sd[pre + ln + ".bias"] = 1 + w(D), w(D)
        sd[pre + "fc1.weight"], sd[pre + "fc1.bias"] = w(FFN, D), w(FFN)
        sd[pre + "fc2.weight"], sd[pre + "fc2.bias"] = w(D, FFN), w(D)
    return sd


def metaseq_forward(sd: dict, tokens: torch.Tensor, activation: str, scale_embedding: bool) -> torch.Tensor:
    """metaseq main's decoder written out from its source (transformer_decoder.py, transformer_decoder_layer.py,
    activation_functions.py): scaled token embeddings plus learned positions from padding_idx + 1 = 2, pre-LN
    layers, metaseq's tanh-approximated gelu, a final layer norm and the output projection."""
    ln = torch.nn.functional.layer_norm
    acts = {"relu": torch.relu,
            "gelu": lambda x: x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))}
    b, t = tokens.shape
    scale = D ** 0.5 if scale_embedding else 1.0
    x = scale * sd["decoder.embed_tokens.weight"][tokens] + sd["decoder.embed_positions.weight"][torch.arange(t) + 2]
    causal = torch.full((t, t), float("-inf")).triu(1)
    hd = D // HEADS
    for i in range(LAYERS):
        p = lambda n, i=i: sd[f"decoder.layers.{i}.{n}"]  # noqa: E731
        h = ln(x, (D,), p("self_attn_layer_norm.weight"), p("self_attn_layer_norm.bias"))
        q, k, v = (h @ p(f"self_attn.{n}.weight").T + p(f"self_attn.{n}.bias") for n in ("q_proj", "k_proj", "v_proj"))
        q, k, v = (z.view(b, t, HEADS, hd).transpose(1, 2) for z in (q, k, v))
        att = ((q * hd ** -0.5) @ k.transpose(-1, -2) + causal).softmax(-1) @ v
        x = x + att.transpose(1, 2).reshape(b, t, D) @ p("self_attn.out_proj.weight").T + p("self_attn.out_proj.bias")
        h = ln(x, (D,), p("final_layer_norm.weight"), p("final_layer_norm.bias"))
        x = x + acts[activation](h @ p("fc1.weight").T + p("fc1.bias")) @ p("fc2.weight").T + p("fc2.bias")
    x = ln(x, (D,), sd["decoder.layer_norm.weight"], sd["decoder.layer_norm.bias"])
    return x @ sd["decoder.output_projection.weight"].T


def _save_singleton(sd, path, **model_cfg):
    cfg = {"decoder_attention_heads": HEADS, "decoder_learned_pos": True, **model_cfg}
    torch.save({"model": sd, "cfg": {"model": cfg}}, path)
    return path


@pytest.mark.parametrize("activation,scale,tied", [("relu", False, True), ("gelu", False, True),
                                                   ("gelu", True, False), ("relu", True, False)])
def test_converted_logits_equal_metaseq_forward(tmp_path, activation, scale, tied):
    from transformers import OPTForCausalLM

    sd = metaseq_state_dict(seed=3, tied=tied)
    ckpt = _save_singleton(sd, tmp_path / "checkpoint.pt", activation_fn=activation, no_scale_embedding=not scale)
    got = OPTForCausalLM.from_pretrained(str(convert([ckpt], tmp_path / "hf"))).eval()
    tokens = torch.randint(4, VOCAB_SIZE, (2, 11), generator=torch.Generator().manual_seed(1))
    want = metaseq_forward(sd, tokens, activation, scale)
    assert torch.allclose(_logits(got, tokens), want, atol=2e-5), (_logits(got, tokens) - want).abs().max()


def test_gelu_written_as_exact_gelu_would_be_off(tmp_path):
    """The measured bug: metaseq's gelu is the tanh approximation; exact gelu gives other logits."""
    from transformers import OPTForCausalLM

    sd = metaseq_state_dict(seed=4, tied=True)
    out = convert([_save_singleton(sd, tmp_path / "c.pt", activation_fn="gelu", no_scale_embedding=True)],
                  tmp_path / "hf")
    model = OPTForCausalLM.from_pretrained(str(out)).eval()
    assert model.config.activation_function == "gelu_new"
    tokens = torch.randint(4, VOCAB_SIZE, (1, 9), generator=torch.Generator().manual_seed(2))
    want = metaseq_forward(sd, tokens, "gelu", False)
    wrong = OPTForCausalLM.from_pretrained(str(out), activation_function="gelu").eval()
    assert (_logits(wrong, tokens) - want).abs().max() > 10 * (_logits(model, tokens) - want).abs().max()


@pytest.mark.parametrize("cfg,message", [
    ({"no_scale_embedding": False}, "no exact conversion"),
    ({"no_scale_embedding": True, "activation_fn": "swiglu"}, "no transformers OPT equivalent"),
    ({"no_scale_embedding": True, "alibi": True}, "ALiBi"),
    ({"no_scale_embedding": True, "layernorm_embedding": True}, "normalizes embeddings"),
])
def test_inexact_checkpoints_are_refused(tmp_path, cfg, message):
    sd = metaseq_state_dict(seed=5, tied=True)
    with pytest.raises(ConfigError, match=message):
        convert([_save_singleton(sd, tmp_path / "c.pt", **cfg)], tmp_path / "hf")


def test_sinusoidal_positions_are_refused(tmp_path):
    sd = metaseq_state_dict(seed=6, tied=True)
    del sd["decoder.embed_positions.weight"]
    with pytest.raises(ConfigError, match="sinusoidal"):
        convert([_save_singleton(sd, tmp_path / "c.pt", no_scale_embedding=True)], tmp_path / "hf")
