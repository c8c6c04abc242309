"""Pack tokenized examples into fixed blocks without ever splitting an example.

Why: OPT-IML trains on 2048-token rows holding several examples; the authors' packer is next-fit
(`sequential` here, block-for-block identical for the same input order, for parity), which wastes
the tail of every row. The default is a best-fit over a bounded window of open blocks: each example
goes into the open block it fills most tightly, so the tails are filled by later short examples
while memory and latency stay bounded. Tie-breaking is by block creation order, so the output is a
pure function of the input order (needed for exact resume).

A block holds `tokens_per_sample + 1` tokens (input = block[:-1], target = block[1:]). Each token
carries a segment id (0 = padding, 1.. = the examples of the block in order), a position that
restarts at 0 with each example and a target flag (target tokens and the closing `</s>`). Every
example opens with `</s>` (the BOS rule, `conventions.EXAMPLE_START_ID`: OPT's document start), so even
an empty source predicts its first target token from inside its own segment.

Too long: the source is truncated from the left (the paper's choice; the opening `</s>` is kept); a
target that still cannot fit is cut on the right and its `</s>` dropped (a cut target does not end
there). Both are counted, in examples and tokens.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from optiml_plugin.conventions import EOS_ID, EXAMPLE_START_ID, PACKING_STRATEGIES, PAD_ID, TRUNCATIONS
from optiml_plugin.errors import ConfigError

# the shortest possible example: one source token (or BOS) + `</s>`; a block with less room is closed
MIN_EXAMPLE_TOKENS = 2


@dataclass
class PackingConfig:
    """`truncation="left"`: source cut from the left first (paper); `"right"`: the whole example
    is cut on the right (metaseq main's behavior, which can lose the target)."""

    tokens_per_sample: int = 2048
    strategy: str = "best_fit"
    window: int = 64
    truncation: str = "left"

    def __post_init__(self) -> None:
        if self.strategy not in PACKING_STRATEGIES:
            raise ConfigError(f"packing strategy must be one of {PACKING_STRATEGIES}, got {self.strategy!r}")
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"packing truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if self.tokens_per_sample < MIN_EXAMPLE_TOKENS:
            raise ConfigError(f"tokens_per_sample must be >= {MIN_EXAMPLE_TOKENS}, "
                              f"got {self.tokens_per_sample}")
        if self.window < 1:
            raise ConfigError(f"packing window must be >= 1, got {self.window}")

    @property
    def block_size(self) -> int:
        return self.tokens_per_sample + 1

    @property
    def open_blocks(self) -> int:
        """How many blocks may be open at once (next-fit keeps exactly one)."""
        return 1 if self.strategy == "sequential" else self.window


@dataclass
class PackItem:
    """One example ready to pack: `tokens` = source + target (+ `</s>` unless cut), loss on
    `tokens[n_src:]`."""

    index: int
    task_id: int
    benchmark_id: int
    tokens: np.ndarray
    n_src: int
    cut_left: int = 0    # source tokens removed from the left
    cut_right: int = 0   # target tokens (incl. `</s>`) removed from the right
    demos: int = 0       # demonstrations before the example (data.demonstrations), inside `tokens`

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def make_item(src_ids: Sequence[int], tgt_ids: Sequence[int], config: PackingConfig, index: int = 0,
              task_id: int = 0, benchmark_id: int = 0, eos_id: int = EOS_ID,
              start_id: int = EXAMPLE_START_ID) -> PackItem:
    """Build the example `</s> src tgt </s>` (the BOS rule: `start_id` opens it, OPT's `</s>` by default,
    another model's `OptTokenizer.start_id`) and fit it to a block. The opening token counts as source and
    is never truncated."""
    block = config.block_size
    n_src = len(src_ids) + 1
    if n_src + len(tgt_ids) + 1 <= block:  # the common case: one conversion, no truncation
        tokens = np.array([start_id, *src_ids, *tgt_ids, eos_id], dtype=np.int64)
        return PackItem(index, task_id, benchmark_id, tokens, n_src)
    src = np.array([start_id, *src_ids], dtype=np.int64)
    tgt = np.concatenate([np.asarray(tgt_ids, dtype=np.int64), np.array([eos_id], dtype=np.int64)])
    if config.truncation == "right":
        whole = np.concatenate([src, tgt])
        return PackItem(index, task_id, benchmark_id, whole[:block], min(len(src), block), 0,
                        len(whole) - block)
    keep_src = max(1, block - len(tgt))   # the opening `</s>` at least
    cut_left = len(src) - keep_src
    src = np.concatenate([src[:1], src[1 + cut_left:]])
    cut_right = max(0, len(src) + len(tgt) - block)
    tgt = tgt[:len(tgt) - cut_right]
    tokens = np.concatenate([src, tgt])
    return PackItem(index, task_id, benchmark_id, tokens, len(src), cut_left, cut_right)


@dataclass
class Block:
    """One packed row of `block_size` tokens with per-token and per-segment metadata."""

    tokens: np.ndarray         # int64 [block_size], pad-filled
    is_target: np.ndarray      # bool  [block_size], True on target tokens and `</s>`
    segment_ids: np.ndarray    # int64 [block_size], 0 = padding, 1.. per example
    positions: np.ndarray      # int64 [block_size], restart at 0 per example, 0 on padding
    indices: List[int]         # stream index of each segment's example
    task_ids: List[int]
    benchmark_ids: List[int]
    lengths: List[int]
    target_tokens: int
    cut_left_examples: int
    cut_left_tokens: int
    cut_right_examples: int
    cut_right_tokens: int
    demos: List[int] = field(default_factory=list)   # per segment: demonstrations before its example

    @property
    def n_tokens(self) -> int:
        return int(sum(self.lengths))


def build_block(items: Sequence[PackItem], block_size: int, pad_id: int = PAD_ID) -> Block:
    """The block of `items` in order; vectorized over the block (no per-item array writes)."""
    lengths = [len(it) for it in items]
    used = sum(lengths)
    if used > block_size:
        raise AssertionError(f"packer overfilled a block: {used} > {block_size}")
    tokens = np.full(block_size, pad_id, dtype=np.int64)
    is_target = np.zeros(block_size, dtype=bool)
    segment_ids = np.zeros(block_size, dtype=np.int64)
    positions = np.zeros(block_size, dtype=np.int64)
    if items:
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        tokens[:used] = np.concatenate([it.tokens for it in items])
        segment_ids[:used] = np.repeat(np.arange(1, len(items) + 1, dtype=np.int64), lens)
        positions[:used] = np.arange(used, dtype=np.int64) - starts
        n_src = np.repeat(np.asarray([it.n_src for it in items], dtype=np.int64), lens)
        is_target[:used] = positions[:used] >= n_src
    return Block(tokens, is_target, segment_ids, positions,
                 [it.index for it in items], [it.task_id for it in items],
                 [it.benchmark_id for it in items], lengths,
                 target_tokens=used - sum(it.n_src for it in items),
                 cut_left_examples=sum(1 for it in items if it.cut_left),
                 cut_left_tokens=sum(it.cut_left for it in items),
                 cut_right_examples=sum(1 for it in items if it.cut_right),
                 cut_right_tokens=sum(it.cut_right for it in items),
                 demos=[it.demos for it in items])


@dataclass
class PackingStats:
    """Counters that add up exactly across batches and workers."""

    blocks: int = 0
    capacity: int = 0
    tokens: int = 0
    target_tokens: int = 0
    examples: int = 0
    cut_left_examples: int = 0
    cut_left_tokens: int = 0
    cut_right_examples: int = 0
    cut_right_tokens: int = 0

    def add_block(self, block: Block) -> None:
        self.blocks += 1
        self.capacity += int(block.tokens.shape[0])
        self.tokens += block.n_tokens
        self.target_tokens += block.target_tokens
        self.examples += len(block.lengths)
        self.cut_left_examples += block.cut_left_examples
        self.cut_left_tokens += block.cut_left_tokens
        self.cut_right_examples += block.cut_right_examples
        self.cut_right_tokens += block.cut_right_tokens

    @classmethod
    def of(cls, blocks: Iterable[Block]) -> "PackingStats":
        stats = cls()
        for block in blocks:
            stats.add_block(block)
        return stats

    @property
    def non_pad_fraction(self) -> float:
        return self.tokens / self.capacity if self.capacity else 0.0

    @property
    def target_fraction(self) -> float:
        return self.target_tokens / self.capacity if self.capacity else 0.0

    @property
    def examples_per_row(self) -> float:
        return self.examples / self.blocks if self.blocks else 0.0

    def to_dict(self) -> Dict[str, float]:
        out: Dict[str, float] = dict(vars(self))
        out.update(non_pad_fraction=self.non_pad_fraction, target_fraction=self.target_fraction,
                   examples_per_row=self.examples_per_row)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, float]) -> "PackingStats":
        return cls(**{k: int(data[k]) for k in vars(cls()).keys()})


@dataclass
class _OpenBlock:
    serial: int
    items: List[PackItem] = field(default_factory=list)
    used: int = 0


class Packer:
    """Online packer: `add(item)` returns the blocks it completed; `flush()` the rest.

    `held()` lists, per open block, the stream indices of its examples; `restore(...)` rebuilds
    the open blocks from the re-tokenized items so a resumed run continues exactly.
    Open blocks are kept by serial (creation order) and in a list sorted by (room, serial), so the
    best fit (tightest room, then oldest) and the fullest block are a bisection away.
    """

    def __init__(self, config: PackingConfig, pad_id: int = PAD_ID) -> None:
        self.config = config
        self.pad_id = pad_id
        self.stats = PackingStats()
        self._open: Dict[int, _OpenBlock] = {}   # by serial, in creation order
        self._rooms: List[Tuple[int, int]] = []  # (room, serial) of every open block, sorted
        self._serial = 0

    def _new_block(self) -> _OpenBlock:
        block = _OpenBlock(self._serial)
        self._serial += 1
        self._open[block.serial] = block
        return block

    def _close(self, block: _OpenBlock) -> Block:
        """Build and count a block already taken out of `_rooms`."""
        del self._open[block.serial]
        out = build_block(block.items, self.config.block_size, self.pad_id)
        self.stats.add_block(out)
        return out

    def add(self, item: PackItem) -> List[Block]:
        size = self.config.block_size
        n = len(item)
        if n > size:
            raise AssertionError(f"item {item.index} has {n} tokens > block {size}: use make_item")
        done: List[Block] = []
        k = bisect_left(self._rooms, (n, -1))  # the tightest room >= n; the oldest of equal rooms
        if k < len(self._rooms):
            best = self._open[self._rooms.pop(k)[1]]
        else:
            if len(self._open) >= self.config.open_blocks:  # close the fullest (then oldest) block
                done.append(self._close(self._open[self._rooms.pop(0)[1]]))
            best = self._new_block()
        best.items.append(item)
        best.used += n
        if size - best.used < MIN_EXAMPLE_TOKENS:
            done.append(self._close(best))
        else:
            insort(self._rooms, (size - best.used, best.serial))
        return done

    def flush(self) -> List[Block]:
        """Close every open block (in creation order): the end of a finite stream."""
        self._rooms = []
        return [self._close(block) for block in list(self._open.values())]

    def held(self) -> List[List[int]]:
        return [[it.index for it in block.items] for block in self._open.values()]

    def restore(self, blocks: Sequence[Sequence[PackItem]]) -> None:
        """Re-open blocks (in their original creation order) from re-made items."""
        self._open = {}
        self._rooms = []
        self._serial = 0
        for items in blocks:
            block = self._new_block()
            block.items = list(items)
            block.used = sum(len(it) for it in items)
            insort(self._rooms, (self.config.block_size - block.used, block.serial))


def pack(items: Iterable[PackItem], config: PackingConfig, pad_id: int = PAD_ID,
         drop_last: bool = False) -> List[Block]:
    """Pack a finite sequence of items (tests, benchmarks, validation sets)."""
    packer = Packer(config, pad_id)
    blocks: List[Block] = []
    for item in items:
        blocks.extend(packer.add(item))
    if not drop_last:
        blocks.extend(packer.flush())
    return blocks
