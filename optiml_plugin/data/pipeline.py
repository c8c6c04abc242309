"""Stream -> tokenizer -> packer -> seeded shuffle buffer -> dict batches of tensors, with exact state.

Why: the trainer and the metaseq task need batches whose every row is a packed block with the
metadata for document masking and per-source loss, and a checkpoint that resumes *exactly* without
replaying the stream (metaseq's fast-forward took up to an hour before its fixes). Every example
still inside the pipeline (read but not packed, in an open packer block, in a completed block on its
way to the shuffle buffer, in the buffer, or ready for the next batch) is named in the state by its
stream index; `stream.example(i)` is a pure function of (seed, i), so resume re-reads and
re-tokenizes only those examples, rebuilds the same blocks, and continues exactly.

The pipeline is a small state machine (`_next_batch`) rather than a chain of generators so that
between two batches nothing is hidden in a suspended frame.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from optiml_plugin.conventions import PAD_ID
from optiml_plugin.hashing import GOLDEN, MASK64, mix64
from optiml_plugin.data.demonstrations import Demonstrations
from optiml_plugin.data.packing import Block, Packer, PackingConfig, PackingStats, PackItem, build_block, make_item
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.errors import BadRecordError, ConfigError, mismatch_error

STATE_VERSION = 1
STATE_WORDS = {"tokens_per_sample": "data.tokens_per_sample", "strategy": "the packing strategy",
               "window": "the packing window", "truncation": "the truncation side",
               "batch_size": "data.batch_size", "seed": "the seed (run.seed)",
               "shuffle_buffer": "the shuffle buffer", "vocab_size": "the tokenizer's vocabulary size",
               "demonstrations": "the demonstration settings (data.metaicl_*, data.fewshot_share, "
                                 "data.max_demonstrations)"}
DEFAULT_ENCODE_CHUNK = 256
# an example's (src_ids, tgt_ids, demonstrations kept)
Encoded = Tuple[List[int], List[int], int]
# a chunk of stream examples and the future of its encodings
_InFlight = Tuple[List[Any], "Future[List[Encoded]]"]


def collate_blocks(blocks: Sequence[Block], rows: Optional[int] = None,
                   pad_id: int = PAD_ID) -> Dict[str, torch.Tensor]:
    """Blocks as a batch of `[rows, L]` tensors (L = block size - 1); all-pad rows fill up to `rows`.

    A block of tokens_per_sample + 1 tokens becomes one row: its first L tokens are the inputs, its last
    L the targets (the next token). Two examples packed in a 12-token row, A = (source 10 11 12,
    target 13 14) and B = (source 20 21, target 22), each opened by `</s>` (2, the BOS rule of
    conventions.py) and closed by `</s>`, then padding (1):

        block            2  10  11  12  13  14   2   2  20  21  22   2   1
        input_ids        2  10  11  12  13  14   2   2  20  21  22   2       <- block[:-1]
        target_ids       1   1   1  13  14   2   1   1   1  22   2   1       <- block[1:], pad where no loss
        loss_mask        0   0   0   1   1   1   0   0   0   1   1   0       <- predicts a target token or </s>
        segment_ids      1   1   1   1   1   1   1   2   2   2   2   2       <- example of the input (0: padding)
        position_ids     0   1   2   3   4   5   6   0   1   2   3   4       <- restart with each example
                        |------------- A -------------|------- B -------|

    The loss covers only target tokens and each example's closing `</s>`; A's closing `</s>` does not
    predict B's opening one (mask 0), and document masking keeps B from attending to A.
    `benchmark_ids`/`task_ids` are per token too (-1 on padding). The picture, as code (run as a
    doctest by tests/test_docs.py):

    >>> from optiml_plugin.data.packing import PackingConfig, make_item, pack
    >>> cfg = PackingConfig(tokens_per_sample=12, strategy="sequential")
    >>> a = make_item([10, 11, 12], [13, 14], cfg, index=0, task_id=0, benchmark_id=0)
    >>> b = make_item([20, 21], [22], cfg, index=1, task_id=1, benchmark_id=1)
    >>> batch = collate_blocks(pack([a, b], cfg))
    >>> for key in ("input_ids", "target_ids", "loss_mask", "segment_ids", "position_ids"):
    ...     print(f"{key:<14}" + "".join(f"{int(v):>4}" for v in batch[key][0]))
    input_ids        2  10  11  12  13  14   2   2  20  21  22   2
    target_ids       1   1   1  13  14   2   1   1   1  22   2   1
    loss_mask        0   0   0   1   1   1   0   0   0   1   1   0
    segment_ids      1   1   1   1   1   1   1   2   2   2   2   2
    position_ids     0   1   2   3   4   5   6   0   1   2   3   4
    """
    n = len(blocks) if rows is None else rows
    if n < len(blocks):
        raise ConfigError(f"collate_blocks: {len(blocks)} blocks do not fit in {n} rows")
    if not blocks and rows is None:
        raise ConfigError("collate_blocks: no blocks and no row count")
    size = blocks[0].tokens.shape[0] if blocks else None
    if size is None:
        raise ConfigError("collate_blocks: cannot infer the block size from zero blocks")
    tokens = np.full((n, size), pad_id, dtype=np.int64)
    is_target = np.zeros((n, size), dtype=bool)
    segments = np.zeros((n, size), dtype=np.int64)
    positions = np.zeros((n, size), dtype=np.int64)
    bench = np.full((n, size), -1, dtype=np.int64)
    task = np.full((n, size), -1, dtype=np.int64)
    for r, block in enumerate(blocks):
        tokens[r] = block.tokens
        is_target[r] = block.is_target
        segments[r] = block.segment_ids
        positions[r] = block.positions
        bench[r] = _per_token(block, block.benchmark_ids)
        task[r] = _per_token(block, block.task_ids)
    loss_mask = is_target[:, 1:]
    target = np.where(loss_mask, tokens[:, 1:], pad_id)
    as_t = torch.from_numpy
    return {"input_ids": as_t(np.ascontiguousarray(tokens[:, :-1])), "target_ids": as_t(target),
            "loss_mask": as_t(np.ascontiguousarray(loss_mask)),
            "segment_ids": as_t(np.ascontiguousarray(segments[:, :-1])),
            "position_ids": as_t(np.ascontiguousarray(positions[:, :-1])),
            "benchmark_ids": as_t(np.ascontiguousarray(bench[:, :-1])),
            "task_ids": as_t(np.ascontiguousarray(task[:, :-1]))}


def _per_token(block: Block, values: Sequence[int]) -> np.ndarray:
    """Each token's value of its segment (`values` per segment; -1 on padding)."""
    return np.asarray([-1] + list(values), dtype=np.int64)[block.segment_ids]


def segment_values(blocks: Sequence[Block], name: str) -> torch.Tensor:
    """[B, L] per token: the block attribute `name` (a value per segment) of the token's example, -1 on
    padding, aligned with `input_ids`."""
    return torch.from_numpy(np.ascontiguousarray(np.stack([_per_token(b, getattr(b, name)) for b in blocks])[:, :-1]))



#: a row's source and target are each clipped to this many characters per token of a packed row
LONG_RECORD_FACTOR = 32


def _source_target(example: Any, max_chars: int) -> Sequence[str]:
    """The (src, tgt) strings of a stream example, each at most `max_chars` long: the source keeps its
    end and the target its start, the parts left-truncation keeps (a 60 MB row once took the tokenizer
    5 GB and minutes, all to be cut to one packed row). A clear error names the example and field."""
    row = example.row if isinstance(example.row, dict) else {}
    for field in ("src", "tgt"):
        value = row.get(field)
        if not isinstance(value, str):
            raise BadRecordError(f"stream index {example.index} (task id {example.task_id})",
                                 row.get("id"), field, "bad_field",
                                 f"expected a string, got {value!r:.60}")
    return row["src"][-max_chars:], row["tgt"][:max_chars]


def _is_long(example: Any, max_chars: int) -> bool:
    row = example.row
    return len(row["src"]) > max_chars or len(row["tgt"]) > max_chars


class PackedBatches:
    """Endless (or, for a finite stream, exhausting) iterator of packed dict batches.

    Each batch is `collate_blocks(...)` plus `stats` (the batch's PackingStats as a dict),
    `example_indices` (per row, the stream index of each segment's example) and `row_ids` (this
    pipeline's running row number, continued across a resume: metaseq's sample ids).

    `stream` is duck-typed: an iterable of examples with `index`, `task_id`, `benchmark_id`, `row`
    (a dict with "src" and "tgt"), plus `example(i)`, `state_dict()` and `load_state_dict()`, and
    optionally `take(n)` (the next n examples at once) (data.stream.ExampleStream).
    `demonstrations` (data.demonstrations; MetaICL training, mixed prompts) puts demonstrations before
    each example; the batch then carries `demo_k` [B, L], the k of each token's example (-1 on padding).
    `shuffle_buffer` counts blocks (default 10 x batch_size, the authors' 10 x batch x shards per
    shard); 0 disables shuffling. `drop_last` drops a final partial batch of a finite stream.
    """

    def __init__(self, stream: Any, tokenizer: OptTokenizer, packing: PackingConfig, batch_size: int,
                 seed: int, shuffle_buffer: Optional[int] = None, drop_last: bool = True,
                 encode_chunk: int = DEFAULT_ENCODE_CHUNK, prefetch: bool = True,
                 demonstrations: Optional[Demonstrations] = None, max_chars: Optional[int] = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        buffer = 10 * batch_size if shuffle_buffer is None else shuffle_buffer
        if buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {buffer}")
        if encode_chunk < 1:
            raise ConfigError(f"encode_chunk must be >= 1, got {encode_chunk}")
        self.stream = stream
        self.tokenizer = tokenizer
        self.packing = packing
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(buffer)
        self.drop_last = drop_last
        self.encode_chunk = int(encode_chunk)
        self.prefetch = prefetch
        self.demonstrations = demonstrations
        self._separator = tokenizer.encode(demonstrations.config.separator) if demonstrations else []
        self.max_chars = int(max_chars or LONG_RECORD_FACTOR * packing.tokens_per_sample)
        self.long_records = 0  # rows clipped to `max_chars` before tokenizing, over the whole run
        self._executor: Optional[ThreadPoolExecutor] = None
        self._inflight: Optional[_InFlight] = None  # a chunk read, its encoding under way
        self.stats = PackingStats()   # over every block yielded so far
        self._reset()

    def _reset(self) -> None:
        self._packer = Packer(self.packing, self.tokenizer.pad_id)
        self._pending: Deque[PackItem] = deque()
        self._incoming: Deque[Block] = deque()
        self._buffer: List[Block] = []
        self._ready: Deque[Block] = deque()
        self._draws = 0
        self._exhausted = False
        self._iter: Optional[Iterator[Any]] = None

    # ---- tokenization -------------------------------------------------------------------------
    def _texts(self, examples: Sequence[Any]) -> List[List[Tuple[str, str]]]:
        """Per example, the (src, tgt) texts to encode, each clipped to `max_chars` (clipped rows are
        counted): its demonstrations (read here, on the calling thread) and itself."""
        pairs = [_source_target(ex, self.max_chars) for ex in examples]
        self.long_records += sum(_is_long(ex, self.max_chars) for ex in examples)
        if self.demonstrations is None:
            return [[pair] for pair in pairs]
        m = self.max_chars
        return [[(s[-m:], t[:m]) for s, t in self.demonstrations.texts(ex)] + [pair]
                for ex, pair in zip(examples, pairs)]

    def _encode_texts(self, groups: Sequence[Sequence[Tuple[str, str]]]) -> List[Encoded]:
        """(src_ids, tgt_ids, k demonstrations kept) per example; one `encode_batch` call."""
        ids = self.tokenizer.encode_pairs([pair for group in groups for pair in group])
        if self.demonstrations is None:
            return [(src, tgt, 0) for src, tgt in ids]
        out, at = [], 0
        for group in groups:
            done = self.demonstrations.assemble(ids[at:at + len(group)], self._separator,
                                                self.packing.block_size)
            out.append((done.src_ids, done.tgt_ids, done.k))
            at += len(group)
        return out

    def _encode(self, examples: Sequence[Any]) -> List[Encoded]:
        return self._encode_texts(self._texts(examples))

    def _make_items(self, examples: Sequence[Any], encoded: Sequence[Encoded]) -> List[PackItem]:
        items = []
        for ex, (src, tgt, k) in zip(examples, encoded):
            item = make_item(src, tgt, self.packing, index=ex.index, task_id=ex.task_id,
                             benchmark_id=ex.benchmark_id, eos_id=self.tokenizer.eos_id,
                             start_id=self.tokenizer.start_id)
            item.demos = k
            items.append(item)
        return items

    def _read_examples(self) -> List[Any]:
        """The next `encode_chunk` examples of the stream, in order (through `take(n)` where the
        stream has it: ExampleStream reads a chunk's rows file by file)."""
        take = getattr(self.stream, "take", None)
        if take is not None:
            return take(self.encode_chunk)
        if self._iter is None:
            self._iter = iter(self.stream)
        return list(itertools.islice(self._iter, self.encode_chunk))

    def _launch(self) -> _InFlight:
        """Read a chunk here and start encoding it on the background thread; a failed read is
        kept in the future, to surface when the chunk is due (as a read in the background would)."""
        future: "Future[List[Encoded]]"
        try:
            examples = self._read_examples()
        except Exception as err:  # re-raised, unchanged, by future.result() when the chunk is due
            future = Future()
            future.set_exception(err)
            return [], future
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optiml-tokenize")
        return examples, self._executor.submit(self._encode_texts, self._texts(examples))

    def _read_more(self) -> bool:
        """Move the next tokenized chunk into the pending queue.

        With `prefetch`, only `tokenizers` works on the background thread (it releases the GIL):
        while it encodes chunk k, this thread reads chunk k + 1 and then makes and packs the items
        of chunk k, so the Python work overlaps encoding instead of following it. Chunks are
        still read strictly in order.
        """
        if not self.prefetch and self._inflight is None:
            examples = self._read_examples()
            items = self._make_items(examples, self._encode(examples))
        else:
            if self._inflight is None:
                self._inflight = self._launch()
            examples, future = self._inflight
            self._inflight = None
            if examples and self.prefetch:
                self._inflight = self._launch()
            items = self._make_items(examples, future.result())
        self._pending.extend(items)
        return bool(items)

    def _settle(self) -> None:
        """Finish the chunk in flight and queue it, so stream state and held indices agree."""
        if self._inflight is not None:
            examples, future = self._inflight
            self._inflight = None
            self._pending.extend(self._make_items(examples, future.result()))

    # ---- the state machine --------------------------------------------------------------------
    def _shuffle_in(self, block: Block) -> None:
        if len(self._buffer) < self.shuffle_buffer:
            self._buffer.append(block)
            return
        if not self._buffer:
            self._ready.append(block)
            return
        j = self._draw(len(self._buffer))
        self._ready.append(self._buffer[j])
        self._buffer[j] = block

    def _draw(self, n: int) -> int:
        """An index in [0, n): a pure function of (seed, draw number), so resume is exact.

        splitmix64 of the pair; the modulo bias (n / 2^64) is nil for buffer-sized n.
        """
        x = mix64((self.seed * GOLDEN + self._draws * 0xD1B54A32D192ED03 + 0x5B0FF) & MASK64)
        self._draws += 1
        return int(x) % n

    def _step(self) -> bool:
        """Advance by one unit of work; False when a finite stream is fully drained."""
        if self._incoming:
            self._shuffle_in(self._incoming.popleft())
        elif self._pending:
            self._incoming.extend(self._packer.add(self._pending.popleft()))
        elif not self._exhausted:
            if not self._read_more():
                self._exhausted = True
                self._incoming.extend(self._packer.flush())
        elif self._buffer:
            self._ready.append(self._buffer.pop(self._draw(len(self._buffer))))
        else:
            return False
        return True

    def _next_batch(self) -> Optional[List[Block]]:
        while len(self._ready) < self.batch_size and self._step():
            pass
        if not self._ready or (len(self._ready) < self.batch_size and self.drop_last):
            return None
        return [self._ready.popleft() for _ in range(min(self.batch_size, len(self._ready)))]

    def __iter__(self) -> "PackedBatches":
        return self

    def __next__(self) -> Dict[str, Any]:
        blocks = self._next_batch()
        if blocks is None:
            raise StopIteration
        batch: Dict[str, Any] = collate_blocks(blocks, pad_id=self.tokenizer.pad_id)
        batch_stats = PackingStats.of(blocks)
        first = self.stats.blocks
        batch["row_ids"] = torch.arange(first, first + len(blocks), dtype=torch.long)
        for block in blocks:
            self.stats.add_block(block)
        batch["stats"] = batch_stats.to_dict()
        batch["example_indices"] = [list(b.indices) for b in blocks]
        if self.demonstrations is not None:   # k per token, counted by the telemetry where trained
            batch["demo_k"] = segment_values(blocks, "demos")
        return batch

    # ---- exact state --------------------------------------------------------------------------
    def _identity(self) -> Dict[str, Any]:
        p = self.packing
        return {"tokens_per_sample": p.tokens_per_sample, "strategy": p.strategy, "window": p.window,
                "truncation": p.truncation, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle_buffer": self.shuffle_buffer, "vocab_size": self.tokenizer.vocab_size,
                "demonstrations": self.demonstrations.config.identity() if self.demonstrations else None}

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serializable: the stream's state plus the stream indices of every held example."""
        self._settle()
        return {"version": STATE_VERSION, **self._identity(), "stream": self.stream.state_dict(),
                "pending": [it.index for it in self._pending],
                "open_blocks": self._packer.held(),
                "incoming": [b.indices for b in self._incoming],
                "buffer": [b.indices for b in self._buffer],
                "ready": [b.indices for b in self._ready],
                "draws": self._draws, "exhausted": self._exhausted, "stats": self.stats.to_dict(),
                "packer_stats": self._packer.stats.to_dict(), "long_records": self.long_records}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"pipeline state version {state.get('version')!r} is not {STATE_VERSION}")
        diff = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if diff:
            raise mismatch_error("packing pipeline", diff, STATE_WORDS)
        self._settle()
        self.stream.load_state_dict(state["stream"])
        self._reset()
        groups = [[list(state["pending"])], state["open_blocks"], state["incoming"], state["buffer"],
                  state["ready"]]
        wanted = sorted({i for group in groups for lists in group for i in lists})
        examples = [self.stream.example(i) for i in wanted]
        by_index = {it.index: it for it in self._make_items(examples, self._encode(examples))}
        size = self.packing.block_size
        pad = self.tokenizer.pad_id

        def blocks(lists: List[List[int]]) -> List[Block]:
            return [build_block([by_index[i] for i in idx], size, pad) for idx in lists]

        self._pending.extend(by_index[i] for i in state["pending"])
        self._packer.restore([[by_index[i] for i in idx] for idx in state["open_blocks"]])
        self._packer.stats = PackingStats.from_dict(state["packer_stats"])
        self._incoming.extend(blocks(state["incoming"]))
        self._buffer = blocks(state["buffer"])
        self._ready.extend(blocks(state["ready"]))
        self._draws = int(state["draws"])
        self._exhausted = bool(state["exhausted"])
        self.stats = PackingStats.from_dict(state["stats"])
        self.long_records = int(state.get("long_records", 0))  # absent from checkpoints before it

    @property
    def held_examples(self) -> int:
        """How many examples a resume re-reads (pending, open blocks, blocks in flight)."""
        self._settle()
        in_blocks = sum(len(b.indices) for q in (self._incoming, self._buffer, self._ready) for b in q)
        return len(self._pending) + sum(len(x) for x in self._packer.held()) + in_blocks
