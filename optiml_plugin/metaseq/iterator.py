"""A metaseq epoch-batch iterator whose state is the data pipeline's state: resume without replay.

Why: metaseq's `StreamingEpochBatchIterator` saves how many sequences each loader worker consumed
and, on resume, replays the shuffle and packing to skip them. The core pipeline instead saves its
exact position (stream cursor, examples held in the packer window and shuffle buffer), so resuming
is O(state) and gives the very batches an uninterrupted run would have given.

This class has the duck type metaseq's trainer and `checkpoint_utils` use (`next_epoch_itr`,
`end_of_epoch`, `iterations_in_epoch`, `state_dict`, `load_state_dict`, `epoch`, `first_batch`,
`dataset`) and imports no metaseq. Training is one endless epoch (stop with `--max-update`);
validation sources are finite lists. Batches are produced in the calling process, in order.

Data-parallel ranks each hold their own pipeline state. `gather` (given by the task) collects all
ranks' states when every rank saves (FSDP); the checkpoint then holds one state per rank.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from optiml_plugin.errors import ConfigError

STATE_KEY = "optiml_pipeline"


class CountingIterator:
    """What `next_epoch_itr` returns: counts batches (`n`), knows whether more remain.

    An endless source always has a next batch and is never peeked, so the pipeline state at any
    moment is exactly "after the batches handed out" (metaseq calls `has_next()` after every step).
    """

    def __init__(self, batches: Iterator[Any], length: int, start: int = 0, endless: bool = False) -> None:
        self._it = batches
        self._length = length
        self.n = start
        self.endless = endless
        self._peeked: List[Any] = []

    def __iter__(self) -> "CountingIterator":
        return self

    def __len__(self) -> int:
        return self._length

    def __next__(self) -> Any:
        item = self._peeked.pop() if self._peeked else next(self._it)
        self.n += 1
        return item

    def has_next(self) -> bool:
        if self.endless or self._peeked:
            return True
        try:
            self._peeked.append(next(self._it))
        except StopIteration:
            return False
        return True


class PipelineEpochIterator:
    """`source()` gives a fresh iterator of metaseq samples; `get_state()`/`set_state()` are the
    pipeline's state (None for finite validation sources, which always restart)."""

    def __init__(self, source: Callable[[], Iterator[Dict[str, Any]]], length: int = 0,
                 get_state: Optional[Callable[[], Dict[str, Any]]] = None,
                 set_state: Optional[Callable[[Dict[str, Any]], None]] = None,
                 gather: Optional[Callable[[Dict[str, Any]], Optional[List[Dict[str, Any]]]]] = None,
                 rank: int = 0, world_size: int = 1, epoch: int = 1, dataset: Any = None,
                 first_batch: Any = "DUMMY") -> None:
        self._source = source
        self._length = length
        self._get_state, self._set_state, self._gather = get_state, set_state, gather
        self.rank, self.world_size = rank, world_size
        self.epoch = max(int(epoch), 1)
        self.dataset = dataset
        self.first_batch = first_batch
        self._itr: Optional[CountingIterator] = None

    @classmethod
    def over(cls, samples: List[Dict[str, Any]], dataset: Any = None) -> "PipelineEpochIterator":
        """A finite, stateless iterator over prepared samples (validation)."""
        return cls(lambda: iter(samples), length=len(samples), dataset=dataset,
                   first_batch=samples[0] if samples else "DUMMY")

    @property
    def next_epoch_idx(self) -> int:
        if self._itr is not None and self.end_of_epoch():
            return self.epoch + 1
        return self.epoch

    def next_epoch_itr(self, **_: Any) -> CountingIterator:
        """metaseq's `shuffle`, `fix_batches_to_gpus` and `set_dataset_epoch` do not apply: order is
        the pipeline's (seeded) order, and validation is never reshuffled."""
        self.epoch = self.next_epoch_idx
        if self._itr is None or self.end_of_epoch():
            self._itr = CountingIterator(self._source(), self._length, endless=self._set_state is not None)
        return self._itr

    def end_of_epoch(self) -> bool:
        return self._itr is not None and not self._itr.has_next()

    @property
    def iterations_in_epoch(self) -> int:
        return self._itr.n if self._itr is not None else 0

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"epoch": self.epoch, "iterations_in_epoch": self.iterations_in_epoch,
                                 "world_size": self.world_size}
        if self._get_state is None:
            return state
        mine = self._get_state()
        ranks = [mine] if self.world_size == 1 else (self._gather(mine) if self._gather else None)
        state[STATE_KEY] = {"ranks": ranks, "saved_by": self.rank}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 1))
        saved = state.get(STATE_KEY)
        if self._set_state is None:
            return
        if saved is None:
            raise ConfigError("the checkpoint's train iterator was not saved by instruction_meta_learning "
                              "(no pipeline state); pass --reset-dataloader to start the data stream anew")
        if int(state.get("world_size", 1)) != self.world_size:
            raise ConfigError(f"the checkpoint's data stream was saved with {state.get('world_size')} "
                              f"data-parallel ranks, this run has {self.world_size}; resuming would change "
                              "the data order. Use the same number of ranks, or pass --reset-dataloader.")
        ranks = saved.get("ranks")
        if ranks is None or len(ranks) != self.world_size:
            raise ConfigError("the checkpoint holds the data stream state of one rank only (it was saved "
                              "without --ddp-backend fully_sharded, where only rank 0 saves); pass "
                              "--reset-dataloader to start the stream anew, or train with FSDP")
        self._set_state(ranks[self.rank])
        self._itr = CountingIterator(self._source(), self._length, endless=True,
                                     start=int(state.get("iterations_in_epoch", 0)))


def endless(make_batches: Callable[[], Iterable[Dict[str, Any]]]) -> Callable[[], Iterator[Dict[str, Any]]]:
    """Wrap a pipeline factory so `source()` continues the same pipeline (never restarts it)."""
    holder: Dict[str, Iterator[Dict[str, Any]]] = {}

    def source() -> Iterator[Dict[str, Any]]:
        if "it" not in holder:
            holder["it"] = iter(make_batches())
        return holder["it"]

    return source
