"""OPT's byte-level BPE through `tokenizers`, with an exact source/target boundary.

Why: OPT-IML's code tokenized `src + " " + tgt` jointly and took the source length from a separate
encoding of `src`, so a merge across the joining space could move the loss boundary by a token.
Here source and target are encoded separately and concatenated, so the boundary is exact by
construction. Ids follow OPT's dictionary (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3); the published
`gpt2-vocab.json` of OPT already places them there, and every loader checks that it does.
Special tokens are not registered as "added tokens": the text "</s>" inside an example encodes
as ordinary pieces and can never forge a separator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from optiml_plugin.conventions import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, UNK_ID  # noqa: F401
from optiml_plugin.errors import ConfigError
from optiml_plugin.fsio import atomic_write_bytes

PathLike = Union[str, "os.PathLike[str]"]

TOKENIZER_JSON = "tokenizer.json"
# file pairs `from_dir` accepts, in order of preference after tokenizer.json
_VOCAB_PAIRS = (("vocab.json", "merges.txt"), ("gpt2-vocab.json", "gpt2-merges.txt"))


def _byte_level(tok: Tokenizer) -> Tokenizer:
    """GPT-2 pre-tokenization and decoding, without a prefix space (as metaseq's OPT)."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class OptTokenizer:
    """Encode/decode text with OPT ids; `encode_pair` gives the exact (source, target) split."""

    def __init__(self, tokenizer: Tokenizer, origin: str = "<in memory>") -> None:
        self._tok = tokenizer
        self.origin = origin
        for want, token in enumerate(SPECIALS):
            got = tokenizer.token_to_id(token)
            if got != want:
                raise ConfigError(
                    f"{origin}: special token {token!r} has id {got}, OPT needs {want} "
                    f"(<s>=0 <pad>=1 </s>=2 <unk>=3); is this OPT's BPE?")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_json: PathLike, merges_txt: PathLike) -> "OptTokenizer":
        """OPT's `gpt2-vocab.json` + `gpt2-merges.txt` (or any vocab/merges pair with OPT ids)."""
        for path in (vocab_json, merges_txt):
            if not Path(path).is_file():
                raise ConfigError(f"tokenizer file not found: {path}")
        try:
            model = models.BPE.from_file(str(vocab_json), str(merges_txt))
        except Exception as err:  # tokenizers raises plain Exception subclasses on bad files
            raise ConfigError(f"cannot read BPE files {vocab_json} / {merges_txt}: {err}") from err
        return cls(_byte_level(Tokenizer(model)), origin=str(vocab_json))

    @classmethod
    def from_json(cls, tokenizer_json: PathLike) -> "OptTokenizer":
        """A `tokenizers` tokenizer.json (e.g. the one `save` writes, or an HF OPT model's)."""
        if not Path(tokenizer_json).is_file():
            raise ConfigError(f"tokenizer file not found: {tokenizer_json}")
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:
            raise ConfigError(f"cannot read tokenizer {tokenizer_json}: {err}") from err
        return cls(tok, origin=str(tokenizer_json))

    @classmethod
    def from_dir(cls, path: PathLike) -> "OptTokenizer":
        """A model directory holding tokenizer.json, or vocab.json+merges.txt, or OPT's gpt2-* pair."""
        root = Path(path)
        if (root / TOKENIZER_JSON).is_file():
            return cls.from_json(root / TOKENIZER_JSON)
        for vocab, merges in _VOCAB_PAIRS:
            if (root / vocab).is_file() and (root / merges).is_file():
                return cls.from_files(root / vocab, root / merges)
        raise ConfigError(
            f"{root}: no tokenizer found (expected {TOKENIZER_JSON}, or vocab.json + merges.txt, "
            f"or gpt2-vocab.json + gpt2-merges.txt)")

    @classmethod
    def builtin(cls, texts: Iterable[str], vocab_size: int = 2048) -> "OptTokenizer":
        """Train a small byte-level BPE in code (no downloads) with OPT's special ids, for the demo.

        Deterministic for the same texts and vocab_size: `tokenizers`' BPE trainer breaks count
        ties by pair order.
        """
        if vocab_size < 256 + len(SPECIALS):
            raise ConfigError(f"builtin tokenizer vocab_size must be >= {256 + len(SPECIALS)}, "
                              f"got {vocab_size}")
        tok = _byte_level(Tokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, origin=f"builtin(vocab_size={vocab_size})")

    def save(self, directory: PathLike) -> Path:
        """Write `tokenizer.json` into `directory` (created); `from_dir` reads it back."""
        out = Path(directory) / TOKENIZER_JSON
        # atomic: a resumed multi-rank run rewrites it on rank 0 while the other ranks read it
        atomic_write_bytes(out, self._tok.to_str(pretty=True).encode("utf-8"))
        return out

    # ---- ids ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def pieces(self, text: str) -> List[str]:
        """BPE token strings of `text` (byte-level, `Ġ` marks a leading space): the xlingual
        Rouge-L track of SNI's scorer splits text into these."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Batch encoding (parallel inside `tokenizers`; without offsets where the installed
        version has `encode_batch_fast`, which we never need)."""
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_pair(self, src: str, tgt: str) -> Tuple[List[int], List[int]]:
        """`(src_ids, tgt_ids)`, encoded separately so the boundary is exact."""
        return self.encode_pairs([(src, tgt)])[0]

    def encode_pairs(self, pairs: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
        """Batch form of `encode_pair` (one `encode_batch` call for all sources and targets)."""
        texts: List[str] = []
        for src, tgt in pairs:
            texts.extend(join_texts(src, tgt))
        ids = self.encode_batch(texts)
        return [(ids[k], ids[k + 1]) for k in range(0, len(ids), 2)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; special ids (0-3) are dropped unless `skip_special=False`."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i >= len(SPECIALS)]
        return self._tok.decode(ids, skip_special_tokens=False)


def join_texts(src: str, tgt: str) -> Tuple[str, str]:
    """The authors' `src.rstrip(' ') + ' ' + tgt.rstrip()`, split into its two halves.

    The joining space goes to the target (GPT-2 BPE attaches a space to the following word), and
    only when the source is non-empty and does not already end in whitespace, or the target does
    not already start with it.
    """
    src = src.rstrip(" ")
    tgt = tgt.rstrip()
    if src and not src[-1].isspace() and tgt and not tgt[0].isspace():
        tgt = " " + tgt
    return src, tgt
