"""optiml's one tokenizer: OPT's byte-level BPE, or any decoder's `tokenizer.json`, with an exact
source/target boundary and one BOS rule, through `tokenizers` only.

Why: OPT-IML's code tokenized `src + " " + tgt` jointly and took the source length from a separate
encoding of `src`, so a merge across the joining space could move the loss boundary by a token.
Here source and target are encoded separately and concatenated, so the boundary is exact by
construction. OPT ids follow OPT's dictionary (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3); the published
`gpt2-vocab.json` of OPT already places them there, and every OPT loader checks that it does.
Special tokens are never matched inside text: the text "</s>" of an example encodes as ordinary
pieces and can never forge a separator.

Other decoders (Llama, Mistral, Gemma, Qwen2, GPT-NeoX, ...) bring their ids and rules in their
checkpoint's `tokenizer.json` + `tokenizer_config.json`; `Specials.from_files` reads them, the only
place where a family's rules are decided (see `Specials`). `resolve_tokenizer` is the one entry
point of the local trainer, the metaseq task and the evaluator.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from optiml_plugin.conventions import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, UNK_ID  # noqa: F401
from optiml_plugin.errors import ConfigError
from optiml_plugin.fsio import atomic_write_bytes

PathLike = Union[str, "os.PathLike[str]"]

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
MODEL_CONFIG = "config.json"
BUILTIN = "builtin"
OPT = "opt"
# file pairs `from_dir` accepts, in order of preference after tokenizer.json
_VOCAB_PAIRS = (("vocab.json", "merges.txt"), ("gpt2-vocab.json", "gpt2-merges.txt"))
# the word-start marker of SentencePiece-style tokenizers (Llama, Mistral, Gemma)
_WORD_START = "\u2581"


def _byte_level(tok: Tokenizer) -> Tokenizer:
    """GPT-2 pre-tokenization and decoding, without a prefix space (as metaseq's OPT)."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@dataclass(frozen=True)
class Specials:
    """A tokenizer's special ids and rules: the one place where a model family's conventions live.

    - `start` (the BOS rule, which token opens every example in training and evaluation): the BOS
      where the tokenizer adds one itself (Llama, Mistral, Gemma), else EOS, the document separator
      (OPT opened every pre-training document with `</s>`; GPT-NeoX and Qwen2 separate documents
      with `<|endoftext|>` and add no BOS). Always one token, so even an empty source predicts its
      first target token from inside its own example.
    - `word_start`: the tokenizer marks the start of a text itself (SentencePiece's prepended `▁`,
      Llama/Mistral); the target is then encoded without the joining space, which its own marker
      stands for, so `src + tgt` tokenizes as the joined text does. GPT-2-style byte-level BPE
      (OPT, GPT-NeoX, Qwen2, Llama 3) and Gemma keep the space on the target.
    - `pad`: the tokenizer's pad token, else EOS (Llama has none); padding is never attended to by
      a real token nor a target, so any id works, but a real one keeps embeddings in range.
    """

    family: str
    bos: Optional[int]
    eos: int
    pad: int
    unk: Optional[int]
    adds_bos: bool
    word_start: bool

    @property
    def start(self) -> int:
        return self.bos if self.adds_bos and self.bos is not None else self.eos

    @classmethod
    def opt(cls) -> "Specials":
        return cls(OPT, BOS_ID, EOS_ID, PAD_ID, UNK_ID, adds_bos=False, word_start=False)

    @classmethod
    def from_files(cls, tok: Tokenizer, config: Dict[str, Any], family: str, origin: str) -> "Specials":
        """The ids named in a checkpoint's tokenizer_config.json / special_tokens_map.json; whether
        it adds BOS from `add_bos_token` where stated, else from what its post-processor does."""

        def token_id(key: str) -> Optional[int]:
            value = config.get(key)
            if isinstance(value, dict):  # {"content": "<s>", ...}
                value = value.get("content")
            if value is None:
                return None
            got = tok.token_to_id(str(value))
            if got is None:
                raise ConfigError(f"{origin}: {key} {value!r} is not in the tokenizer's vocabulary")
            return int(got)

        bos, eos, pad, unk = (token_id(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
        if eos is None:
            raise ConfigError(f"{origin}: no eos_token in {TOKENIZER_CONFIG} or {SPECIAL_TOKENS_MAP}; "
                              f"examples end with it, so it is required")
        stated = config.get("add_bos_token")
        if isinstance(stated, bool):
            adds_bos = stated and bos is not None
        else:
            probe = tok.encode("a", add_special_tokens=True).ids
            adds_bos = bos is not None and bool(probe) and probe[0] == bos
        pieces = tok.encode("a", add_special_tokens=False).tokens
        word_start = "".join(pieces).startswith(_WORD_START)
        return cls(family, bos, eos, eos if pad is None else pad, unk, adds_bos, word_start)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _load_json_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ConfigError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception subclasses on bad files
        raise ConfigError(f"cannot read tokenizer {path}: {err}") from err


def _load_bpe_files(vocab_json: PathLike, merges_txt: PathLike) -> Tokenizer:
    for path in (vocab_json, merges_txt):
        if not Path(path).is_file():
            raise ConfigError(f"tokenizer file not found: {path}")
    try:
        model = models.BPE.from_file(str(vocab_json), str(merges_txt))
    except Exception as err:
        raise ConfigError(f"cannot read BPE files {vocab_json} / {merges_txt}: {err}") from err
    return _byte_level(Tokenizer(model))


class OptTokenizer:
    """Encode/decode text with a model's ids; `encode_pair` gives the exact (source, target) split.

    OPT's rules by default (ids checked); another family's when built with its `Specials`. The name
    stays OPT's, as the data path and the metaseq task were written for it first.
    """

    def __init__(self, tokenizer: Tokenizer, origin: str = "<in memory>", specials: Optional[Specials] = None,
                 config: Optional[Dict[str, Any]] = None) -> None:
        self._tok = tokenizer
        self.origin = origin
        self.specials = specials or Specials.opt()
        self._config = dict(config or {})
        if self.specials.family == OPT:
            for want, token in enumerate(SPECIALS):
                got = tokenizer.token_to_id(token)
                if got != want:
                    raise ConfigError(
                        f"{origin}: special token {token!r} has id {got}, OPT needs {want} "
                        f"(<s>=0 <pad>=1 </s>=2 <unk>=3); is this OPT's BPE?")
            self._special_ids: FrozenSet[int] = frozenset(range(len(SPECIALS)))
        else:
            ids = {i for i in (self.specials.bos, self.specials.eos, self.specials.pad, self.specials.unk)
                   if i is not None}
            added = getattr(tokenizer, "get_added_tokens_decoder", lambda: {})()
            ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
            self._special_ids = frozenset(ids)
        if hasattr(tokenizer, "encode_special_tokens"):  # tokenizers >= 0.19: added tokens in text are text
            tokenizer.encode_special_tokens = True

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_json: PathLike, merges_txt: PathLike) -> "OptTokenizer":
        """OPT's `gpt2-vocab.json` + `gpt2-merges.txt` (or any vocab/merges pair with OPT ids)."""
        return cls(_load_bpe_files(vocab_json, merges_txt), origin=str(vocab_json))

    @classmethod
    def from_json(cls, tokenizer_json: PathLike) -> "OptTokenizer":
        """A `tokenizers` tokenizer.json with OPT ids (e.g. the one `save` writes for OPT); a file beside
        a tokenizer_config.json is read as its directory (`from_dir`)."""
        path = Path(tokenizer_json)
        if path.name == TOKENIZER_JSON and (path.parent / TOKENIZER_CONFIG).is_file():
            return cls.from_dir(path.parent)
        return cls(_load_json_tokenizer(path), origin=str(path))

    @classmethod
    def from_dir(cls, path: PathLike) -> "OptTokenizer":
        """A tokenizer or checkpoint directory: tokenizer.json, or vocab.json+merges.txt, or OPT's gpt2-*
        pair. OPT's rules (ids checked) unless a tokenizer_config.json names other special tokens and the
        model is not OPT (config.json's model_type); then that model's `Specials`."""
        root = Path(path)
        if (root / TOKENIZER_JSON).is_file():
            tok, origin = _load_json_tokenizer(root / TOKENIZER_JSON), str(root / TOKENIZER_JSON)
        else:
            pair = next(((root / v, root / m) for v, m in _VOCAB_PAIRS
                         if (root / v).is_file() and (root / m).is_file()), None)
            if pair is None:
                hint = (" (a SentencePiece tokenizer.model: write tokenizer.json once with transformers' "
                        "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))"
                        if (root / "tokenizer.model").is_file() else "")
                raise ConfigError(
                    f"{root}: no tokenizer found (expected {TOKENIZER_JSON}, or vocab.json + merges.txt, "
                    f"or gpt2-vocab.json + gpt2-merges.txt){hint}")
            tok, origin = _load_bpe_files(*pair), str(pair[0])
        family = str(_read_json(root / MODEL_CONFIG).get("model_type", "")) if (root / MODEL_CONFIG).is_file() \
            else ""
        config: Dict[str, Any] = {}
        for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):  # the config's values win, as in transformers
            if (root / name).is_file():
                config.update(_read_json(root / name))
        family = family or str(config.get("model_type", ""))  # `save` records it for a directory without config.json
        if family == OPT or not config:
            return cls(tok, origin=origin)
        specials = Specials.from_files(tok, config, family or "unknown", str(root))
        return cls(tok, origin=origin, specials=specials, config=config)

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
        """Write `tokenizer.json` (and, for non-OPT rules, the tokenizer_config.json they came from) into
        `directory` (created), atomically: a resumed multi-rank run rewrites them on rank 0 while the other
        ranks read them; `from_dir` reads it back with the same rules."""
        out = Path(directory)
        atomic_write_bytes(out / TOKENIZER_JSON, self._tok.to_str(pretty=True).encode("utf-8"))
        if self.specials.family != OPT:
            config = dict(self._config)
            config.setdefault("model_type", self.specials.family)
            atomic_write_bytes(out / TOKENIZER_CONFIG, (json.dumps(config, indent=1) + "\n").encode("utf-8"))
        return out / TOKENIZER_JSON

    # ---- ids ----------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.specials.family

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self.specials.pad

    @property
    def eos_id(self) -> int:
        return self.specials.eos

    @property
    def bos_id(self) -> Optional[int]:
        return self.specials.bos

    @property
    def start_id(self) -> int:
        """The token that opens every example (the BOS rule, `Specials.start`)."""
        return self.specials.start

    def require_opt(self, what: str) -> "OptTokenizer":
        """Refuse non-OPT rules where only OPT is supported (metaseq's dictionary)."""
        if self.family != OPT:
            raise ConfigError(f"{self.origin}: {what} needs OPT's BPE with OPT's ids; this is a "
                              f"{self.family} tokenizer")
        return self

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

    def split_pair(self, src: str, tgt: str) -> Tuple[str, str]:
        """The texts `encode_pair` encodes: `join_texts`, less the joining space where the tokenizer
        marks a text's start itself (`Specials.word_start`)."""
        src, tgt = join_texts(src, tgt)
        if self.specials.word_start and src and tgt.startswith(" "):
            tgt = tgt[1:]
        return src, tgt

    def encode_target(self, src: str, tgt: str) -> List[int]:
        """The target's ids as `encode_pair` gives them (the evaluator's candidates)."""
        return self.encode(self.split_pair(src, tgt)[1])

    def encode_pair(self, src: str, tgt: str) -> Tuple[List[int], List[int]]:
        """`(src_ids, tgt_ids)`, encoded separately so the boundary is exact."""
        return self.encode_pairs([(src, tgt)])[0]

    def encode_pairs(self, pairs: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
        """Batch form of `encode_pair` (one `encode_batch` call for all sources and targets)."""
        texts: List[str] = []
        for src, tgt in pairs:
            texts.extend(self.split_pair(src, tgt))
        ids = self.encode_batch(texts)
        return [(ids[k], ids[k + 1]) for k in range(0, len(ids), 2)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; special ids (OPT's 0-3, another model's special tokens) are dropped unless
        `skip_special=False`."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)


def resolve_tokenizer(spec: Union[PathLike, Tuple[PathLike, PathLike]],
                      builtin_texts: Optional[Callable[[], Iterable[str]]] = None,
                      builtin_vocab_size: int = 2048, what: str = "tokenizer") -> OptTokenizer:
    """The one resolver of a tokenizer spec: 'builtin' (a BPE trained on `builtin_texts()`), a
    (vocab.json, merges.txt) pair, a tokenizer.json file, or a tokenizer/checkpoint directory.
    `what` names the setting in errors (e.g. 'data.tokenizer')."""
    if isinstance(spec, tuple):
        return OptTokenizer.from_files(*spec)
    if str(spec) == BUILTIN:
        if builtin_texts is None:
            raise ConfigError(f"{what}: 'builtin' trains a tokenizer on a bench; none is given here")
        return OptTokenizer.builtin(builtin_texts(), vocab_size=builtin_vocab_size)
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir():
        return OptTokenizer.from_dir(path)
    if path.is_file():
        return OptTokenizer.from_json(path)
    raise ConfigError(f"{what}: {str(spec)!r} is neither 'builtin' nor a tokenizer file or directory")


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
