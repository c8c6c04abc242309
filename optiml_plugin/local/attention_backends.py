"""Document-masked attention for packed rows on any transformers decoder (OPT, Llama, Mistral, Qwen2, Gemma,
GPT-NeoX), chosen per device.

Why several backends: a packed row holds several examples that must not attend to each other.
- "per_example": causal SDPA over each example's own tokens, examples of similar length gathered into a few
  right-padded batches (one call each), so masked blocks are never computed; the lengths come from the
  packer's segment ids. Fastest on CPU.
- "dense": one block-diagonal causal bool mask [B,1,L,L] through SDPA (works everywhere; computes all pairs).
- "flex": FlexAttention with a block mask (skips masked blocks with fused kernels); only where the installed
  torch has it AND it has a backward on the device (torch 2.13 has none on CPU).
- "causal": plain causal attention, NOT document-masked: the baseline for benchmarks and for rows that hold a
  single right-padded example.
The custom ones are registered in transformers' AttentionInterface (no monkey-patching); the model reads
per-batch extras (spans, block mask) from keyword arguments transformers forwards to the attention function.
Positions restart per example through `position_ids`, which OPT's learned positions and the rotary
families' rotations both read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from optiml_plugin.errors import ConfigError

BACKENDS = ("auto", "per_example", "dense", "flex", "causal")
PER_EXAMPLE = "optiml_per_example"
FLEX = "optiml_flex"
Spans = List[List[Tuple[int, int]]]


def row_spans(segment_ids: torch.Tensor) -> Spans:
    """Maximal runs of equal segment id per row as (start, end): each example, and the trailing padding run
    (padding attends causally within itself, so every query has a key and nothing is NaN)."""
    seg = segment_ids.detach().cpu()
    length = seg.shape[1]
    spans: Spans = []
    for row in seg:
        cuts = (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
        edges = [0] + cuts + [length]
        spans.append([(edges[i], edges[i + 1]) for i in range(len(edges) - 1)])
    return spans


@dataclass
class SpanBuckets:
    """Where each example of a packed batch goes in a few right-padded [n, longest, ...] groups, and back.

    Why: slicing q/k/v span by span makes the backward fill a whole [B,H,L,D] zero gradient per span and
    layer; one gather per tensor (and one scatter back) replaces those, and examples of nearly equal length
    share one causal SDPA call. Right padding needs no key mask under a causal mask: a real query only sees
    keys at or before it, all of its own example; padded queries are dropped on the way back, so their
    (zero) gradients never reach real keys. Groups are tight (ratio 1.1): on CPU the padded query/key
    pairs cost more than the saved calls.
    """

    shapes: List[Tuple[int, int]]  # per group: (examples, longest)
    gather: torch.Tensor  # the groups' [n, longest] flat (row * L + position) indices, flattened and joined
    scatter: torch.Tensor  # [B * L]: each token's place in `gather`


def span_buckets(spans: Spans, length: int, device: torch.device, ratio: float = 1.1) -> SpanBuckets:
    """Groups spans longest first; a group takes spans while its longest is <= `ratio` x theirs (so padding
    wastes at most (1 - 1/ratio) of a group's query slots)."""
    flat = sorted(((e - s, b * length + s) for b, row in enumerate(spans) for s, e in row), reverse=True)
    shapes: List[Tuple[int, int]] = []
    gather: List[torch.Tensor] = []
    scatter = torch.empty(len(spans) * length, dtype=torch.long)
    done = i = 0
    while i < len(flat):
        longest = flat[i][0]
        j = i
        while j < len(flat) and flat[j][0] * ratio >= longest:
            j += 1
        lengths = torch.tensor([n for n, _ in flat[i:j]])
        starts = torch.tensor([start for _, start in flat[i:j]])
        offsets = torch.arange(longest)
        real = offsets[None, :] < lengths[:, None]
        index = starts[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)
        slot = done + torch.arange(j - i)[:, None] * longest + offsets[None, :]
        scatter[index[real]] = slot[real]
        gather.append(index.flatten())
        shapes.append((j - i, longest))
        done += (j - i) * longest
        i = j
    return SpanBuckets(shapes, torch.cat(gather).to(device), scatter.to(device))


def per_example_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                          dropout: float = 0.0, optiml_spans: Optional[SpanBuckets] = None,
                          **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """transformers attention function: q/k/v [B,H,L,D] -> ([B,L,H,D], None), causal within each span."""
    if optiml_spans is None:
        raise RuntimeError("per_example attention needs optiml_spans (call the model through DocumentAttention)")
    key, value = share_kv_heads(query, key), share_kv_heads(query, value)
    b, h, length, d = query.shape
    sizes = [n * longest for n, longest in optiml_spans.shapes]
    # one gather per tensor (its backward is one scatter, not one full-size zero fill per group)
    groups = [t.transpose(1, 2).reshape(b * length, h * d).index_select(0, optiml_spans.gather).split(sizes)
              for t in (query, key, value)]
    outs = []
    for (n, longest), q, k, v in zip(optiml_spans.shapes, *groups):
        q, k, v = (t.view(n, longest, h, d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling)
        outs.append(o.transpose(1, 2).reshape(-1, h * d))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    return out.index_select(0, optiml_spans.scatter).view(b, length, h, d), None


def share_kv_heads(query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention (Llama 2 70B, Mistral, Qwen2, TinyLlama: fewer key/value heads than query
    heads): each key/value head serves `heads / kv_heads` consecutive query heads, as transformers' repeat_kv."""
    groups = query.shape[1] // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


_compiled_flex: Dict[str, Any] = {}


def flex_attention_fn(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, scaling: Optional[float] = None, dropout: float = 0.0,
                      optiml_block_mask: Any = None, **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """transformers attention function over FlexAttention; compiled on accelerators (eager is slow there)."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if query.device.type != "cpu":
        fn = _compiled_flex.setdefault("fn", torch.compile(flex_attention, dynamic=False))
    out = fn(query, share_kv_heads(query, key), share_kv_heads(query, value), block_mask=optiml_block_mask,
             scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PER_EXAMPLE, per_example_attention)
    AttentionInterface.register(FLEX, flex_attention_fn)


def flex_available(device: torch.device) -> bool:
    """FlexAttention importable and trainable here: torch 2.13 has no FlexAttention backward on CPU."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return torch.device(device).type == "cuda"


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> flex on CUDA when available, else per_example; an explicit choice is checked, not changed."""
    if name not in BACKENDS:
        raise ConfigError(f"attention: unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        return "flex" if flex_available(device) else "per_example"
    if name == "flex" and not flex_available(device):
        raise ConfigError(f"attention: 'flex' needs torch.nn.attention.flex_attention with a backward on "
                          f"{torch.device(device).type} (torch {torch.__version__}); use 'per_example' or 'dense'")
    return name


def sliding_window(config: Any) -> Optional[int]:
    """The model's attention window when it is in use (Mistral v0.1, Qwen2 with use_sliding_window), else None."""
    window = getattr(config, "sliding_window", None)
    if not window or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


_IMPLEMENTATION = {"per_example": PER_EXAMPLE, "flex": FLEX, "dense": "sdpa", "causal": "sdpa"}


class DocumentAttention:
    """Turns a packed batch into model keyword arguments for one backend, and sets the model to use it."""

    def __init__(self, backend: str, device: torch.device) -> None:
        self.requested = backend
        self.backend = resolve_backend(backend, device)
        _register()

    def configure(self, model: torch.nn.Module, max_length: Optional[int] = None) -> torch.nn.Module:
        """Set the model's attention implementation, after checking that this backend computes exactly the
        model's attention on rows of `max_length` tokens: no sliding window shorter than a row (the document
        masks here are full causal), and no attention dropout under flex (FlexAttention has none; 'auto'
        then takes per_example)."""
        window = sliding_window(model.config)
        if window is not None and (max_length is None or window < max_length):
            raise ConfigError(f"attention: {type(model).__name__} uses sliding-window attention ({window} tokens) "
                              f"but the document masks here are full causal over rows of {max_length} tokens; set "
                              f"model.overrides.sliding_window: null, or data.tokens_per_sample below {window}")
        dropout = float(getattr(model.config, "attention_dropout", 0.0) or 0.0)
        if self.backend == "flex" and dropout > 0:
            if self.requested != "auto":
                raise ConfigError(f"attention: 'flex' has no attention dropout (model attention_dropout "
                                  f"{dropout}); use 'per_example' or 'dense', or attention_dropout 0")
            self.backend = "per_example"
        model.config._attn_implementation = _IMPLEMENTATION[self.backend]
        return model

    def model_inputs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """input_ids + position_ids (restarting per example) + the backend's mask or spans."""
        inputs: Dict[str, Any] = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        seg = batch["segment_ids"]
        if self.backend == "per_example":
            inputs["optiml_spans"] = span_buckets(row_spans(seg), seg.shape[1], seg.device)
        elif self.backend == "dense":
            from optiml_plugin.attention import document_causal_mask

            inputs["attention_mask"] = document_causal_mask(seg)
        elif self.backend == "flex":
            from optiml_plugin.attention import flex_block_mask

            inputs["optiml_block_mask"] = flex_block_mask(seg)
        elif self.backend == "causal":
            # transformers (5.x) reads restarting position ids without a mask as packed sequences and masks them
            # itself (measured: Llama's packed logits then equal each example alone); an explicit all-ones
            # padding mask keeps this baseline what it says, plain causal, for every family
            inputs["attention_mask"] = torch.ones_like(batch["input_ids"])
        return inputs
