"""The training recipe: one typed schema read by `optiml train`, `optiml sweep` and the metaseq task.

Why one schema: the three front ends used to parse the same settings by hand, under other names and
with other defaults, and had drifted (`lr: 1e-4` crashed one and not another). Here every setting is
stated once with its type, default and help, and pydantic (v2; it installs beside metaseq's
omegaconf/hydra pins) checks a whole file at once. Errors are one line naming the file, the line of
the key and the key: `configs/x.yaml:14: optim.lr: expected a number, got '0.002x'`.

Types are strict where YAML is unambiguous (an integer key refuses 2.5, `2048.5` and `true`) and
lenient where it is not: YAML 1.1 reads `1e-4` (no dot) as a string, so number keys accept a string
that parses as a number.

Names follow metaseq's flags (`warmup_updates`, `max_update`, `adam_betas`, `update_freq`,
`packing_strategy`, `loss_normalization`): the paper's presets, the released checkpoint names and
`metaseq-train` command lines already use them. Defaults are those of `optiml train` (a laptop-sized
starting point, docs/local_training.md); the paper's values live in the presets
(projects/opt_iml/presets/recipe.yaml, installed as optiml_plugin/presets), which set every key the
sweep renders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple, Type, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict,
                      ValidationError)

from optiml_plugin.conventions import EOS_ID, EVAL_SPLITS, VALID_SPLITS
from optiml_plugin.data.packing import STRATEGIES, TRUNCATIONS
from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import NORMALIZE
from optiml_plugin.yamlio import KeyPath, read_yaml_mapping_lines


def _number(value: Any) -> Any:
    """A YAML number, or a string that parses as one (YAML 1.1 reads `1e-4` as a string)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value


class Choices(tuple):
    """Marks a string setting's allowed values in its annotation (read back by `metaseq_fields`)."""


def _choice(options: Tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {list(options)}")
        return value
    return Annotated[str, Strict(), AfterValidator(check), Choices(options)]


Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
PosFloat = Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, BeforeValidator(_number), Field(ge=0, le=1)]
Bool = Annotated[bool, Strict()]
Strategy = _choice(STRATEGIES)
Truncation = _choice(TRUNCATIONS)
Normalization = _choice(NORMALIZE)
EvalSplit = _choice(EVAL_SPLITS)


def _help(default: Any, text: str, **kw: Any) -> Any:
    return Field(default, description=text, **kw)


class Section(BaseModel):
    """A config section: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------- sections
class DataFields(Section):
    """Mixture, packing, validation and loss: the settings the metaseq task shares (`metaseq_fields`)."""

    tokens_per_sample: PosInt = _help(2048, "tokens per packed row (paper: 2048)", ge=2)
    packing_strategy: Strategy = _help(  # type: ignore[valid-type]
        "best_fit", "best_fit (bounded window; fewer pad tokens) or sequential (next-fit, as the authors)")
    packing_window: PosInt = _help(64, "open blocks the best_fit packer chooses among")
    truncation: Truncation = _help(  # type: ignore[valid-type]
        "left", "too-long examples: cut the source from the left (paper) or the right")
    benchmark_proportions: Optional[Dict[str, Float]] = _help(
        None, "benchmark shares; unlisted benchmarks share the rest by capped size (null: by size)")
    eps: Optional[PosInt] = _help(4096, "examples-proportional cap per task (null: no cap)")
    benchmark_caps: Optional[Dict[str, PosInt]] = _help(None, "per-benchmark caps overriding eps")
    shuffle_buffer: Optional[NonNegInt] = _help(
        None, "packed rows held for shuffling (0: none; null: 10 x batch_size)")
    valid_splits: List[EvalSplit] = _help(  # type: ignore[valid-type]
        list(VALID_SPLITS), "bench splits scored by validation")
    max_valid_examples_per_task: NonNegInt = _help(
        250, "first N rows of every task in validation, in file order (paper §4.1; 0: all)")
    loss_normalization: Normalization = _help(  # type: ignore[valid-type]
        "token", "token: mean over target tokens (paper); example: mean of per-example means")


class DataConfig(DataFields):
    bench: str = _help("", "bench directory (`optiml bench build`)")
    tokenizer: str = _help("builtin", "builtin (BPE trained on the bench) or a tokenizer directory")
    builtin_vocab_size: PosInt = _help(2048, "vocabulary of the builtin tokenizer")
    batch_size: PosInt = _help(8, "rows per micro-batch per rank")
    max_record_chars: NonNegInt = _help(
        0, "characters kept of a row's source (its end) and target (its start) before tokenizing; longer "
           "rows are clipped and counted (0: 32 x tokens_per_sample)")


class ModelConfig(Section):
    preset: Optional[str] = _help("tiny", "local/model.py PRESETS; null when checkpoint is given")
    checkpoint: Optional[str] = _help(None, "a transformers OPT directory (or a hub name, with network)")
    dropout: Fraction = _help(0.1, "dropout, embeddings included (paper: 0.1)")
    overrides: Dict[str, Any] = _help({}, "OPTConfig fields over the preset")


class OptimConfig(Section):
    lr: PosFloat = _help(5e-5, "peak learning rate (paper: 5e-5 at 30B/175B)")
    adam_betas: List[Fraction] = _help([0.9, 0.95], "Adam betas", min_length=2, max_length=2)
    adam_eps: PosFloat = _help(1e-8, "Adam epsilon (torch's default; the paper's runs: 1e-6)")
    weight_decay: NonNegFloat = _help(0.0, "not applied to biases and norms; the paper does not state it")
    warmup_updates: NonNegInt = _help(60, "linear warmup updates, then linear decay to 0 at max_update")
    max_update: PosInt = _help(1000, "updates to train")
    clip_norm: NonNegFloat = _help(1.0, "gradient norm clip")
    update_freq: PosInt = _help(1, "micro-batches per update (gradient accumulation)")


class RunConfig(Section):
    out_dir: str = _help("runs/train", "run directory")
    seed: NonNegInt = _help(1, "seed of the stream, the shuffle and the model init")
    device: _choice(("auto", "cpu", "cuda")) = _help("auto", "auto | cpu | cuda")  # type: ignore[valid-type]
    precision: _choice(("auto", "fp32", "bf16", "fp16")) = _help(  # type: ignore[valid-type]
        "auto", "auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16")
    attention: str = _help("auto", "auto | per_example | dense | flex | causal (no document mask)")
    distributed: _choice(("auto", "none", "ddp", "fsdp")) = _help(  # type: ignore[valid-type]
        "auto", "auto (ddp when WORLD_SIZE > 1) | none | ddp | fsdp")
    threads: Union[_choice(("auto",)), NonNegInt] = _help(  # type: ignore[valid-type]
        "auto", "CPU threads for torch: auto (1 for models under 20M parameters on CPU, else torch's default) "
                "| N | 0 (torch's default)")
    log_every: PosInt = _help(10, "updates between log lines")
    valid_every: NonNegInt = _help(100, "updates between validations (0: only at the end)")
    save_every: NonNegInt = _help(100, "updates between checkpoints (0: only at the end)")
    keep_last: PosInt = _help(2, "checkpoints kept")
    tensorboard: Bool = _help(True, "write TensorBoard events")
    progress: Bool = _help(True, "show a progress bar")


class LaunchConfig(Section):
    """`metaseq-train` settings of the recipe that the local trainer does not have (sweep only)."""

    self_attn_doc_sep: Int = _help(EOS_ID, "document attention mask on this token (`docsep_2`)")
    optimizer: _choice(("adam",)) = _help("adam", "metaseq optimizer")  # type: ignore[valid-type]
    fp16_adam_stats: Bool = _help(False, "fp16 Adam state (`fp16adam`); false: fp32 (`fp32adam`)")
    lr_scheduler: _choice(("polynomial_decay",)) = _help(  # type: ignore[valid-type]
        "polynomial_decay", "metaseq schedule (with power 1 and end 0: linear decay to 0)")
    power: NonNegFloat = _help(1.0, "polynomial decay power")
    end_learning_rate: NonNegFloat = _help(0.0, "learning rate at max_update")
    attention_dropout: Fraction = _help(0.1, "attention dropout")
    fp16_init_scale: PosInt = _help(128, "initial dynamic loss scale")
    save_interval_updates: NonNegInt = _help(1000, "updates between checkpoints")
    validate_interval_updates: NonNegInt = _help(1000, "updates between validations")


class TrainConfig(Section):
    """An `optiml train` file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump()


SECTIONS: Dict[str, Type[Section]] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
                                      "run": RunConfig}
# every hyperparameter by its one name (a recipe preset's flat `train:` keys), and its section
_ALL_SECTIONS: Dict[str, Type[Section]] = {**SECTIONS, "launch": LaunchConfig}
SECTION_OF: Dict[str, str] = {}
for _section, _cls in _ALL_SECTIONS.items():
    for _name in _cls.model_fields:
        assert _name not in SECTION_OF, f"recipe key {_name} is defined twice"
        SECTION_OF[_name] = _section

# keys that changed name, so an old config fails with the new name instead of a bare "unknown"
RENAMED = {
    "max_valid_examples": "data.max_valid_examples_per_task (the validation cap is per task, not per split)",
    "warmup_steps": "optim.warmup_updates", "max_steps": "optim.max_update", "betas": "optim.adam_betas",
    "grad_accum": "optim.update_freq", "loss_normalize": "data.loss_normalization",
    "packing": "data.packing_strategy", "window": "data.packing_window",
    "proportions": "data.benchmark_proportions",
}


# -------------------------------------------------------------------------------------- validation
def _line(lines: Dict[KeyPath, Optional[int]], loc: KeyPath) -> Optional[int]:
    """The line of the deepest key of `loc` the file has (a missing key: its section's line); None for
    a key given on the command line (`lines` maps it to None)."""
    for i in range(len(loc), 0, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return None


def _known(cls: Type[BaseModel], loc: KeyPath) -> List[str]:
    """The keys allowed beside the last part of `loc` (for unknown-key errors)."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        cls = sub
    return sorted(cls.model_fields)


def schema_error(err: ValidationError, cls: Type[BaseModel], where: str,
                 lines: Optional[Dict[KeyPath, int]] = None, prefix: KeyPath = ()) -> ConfigError:
    """pydantic's first error as one line: `file:line: section.key: problem, got value`.

    `prefix` is the path of the validated mapping inside the file (a preset's `train` section)."""
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    line = _line(lines or {}, prefix + loc)
    key = ".".join(str(p) for p in prefix + loc)
    head = f"{where}:{line}" if line else where
    if first["type"] == "extra_forbidden":
        name = str(loc[-1])
        hint = f"; {name} is now {RENAMED[name]}" if name in RENAMED else ""
        message = f"{head}: {key}: unknown key; known: {_known(cls, loc)}{hint}"
    else:
        problem = str(first["msg"]).replace("Value error, ", "")
        got = f", got {first['input']!r}" if first["type"] != "missing" else ""
        message = f"{head}: {key}: {problem}{got}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ConfigError(message)


def validate(cls: Type[Section], values: Any, where: str, lines: Optional[Dict[KeyPath, int]] = None,
             prefix: KeyPath = ()) -> Any:
    """`cls` from a mapping, or a ConfigError naming file, line and key."""
    if not isinstance(values, dict):
        line = _line(lines or {}, prefix)
        head = f"{where}:{line}" if line else where
        raise ConfigError(f"{head}: {'.'.join(map(str, prefix)) or 'config'} must be a mapping, "
                          f"got {type(values).__name__}")
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise schema_error(e, cls, where, lines, prefix) from None


def check_value(key: str, value: Any, where: str, lines: Optional[Dict[KeyPath, int]] = None,
                prefix: KeyPath = ()) -> Any:
    """One recipe value by its flat name (the sweep's presets and `--grid`), checked by its section's type."""
    section = SECTION_OF.get(key)
    if section is None:
        line = _line(lines or {}, prefix + (key,))
        head = f"{where}:{line}" if line else where
        raise ConfigError(f"{head}: {'.'.join(map(str, prefix + (key,)))}: unknown hyperparameter; "
                          f"known: {sorted(SECTION_OF)}")
    cls = _ALL_SECTIONS[section]
    try:
        return getattr(cls.model_validate({key: value}), key)
    except ValidationError as e:
        raise schema_error(e, cls, where, lines, prefix) from None


def default(key: str) -> Any:
    """The schema's default of a flat recipe key."""
    return _ALL_SECTIONS[SECTION_OF[key]].model_fields[key].get_default(call_default_factory=True)


# ------------------------------------------------------------------------------------ train files
def config_from_dict(values: Dict[str, Any], where: str = "config",
                     lines: Optional[Dict[KeyPath, int]] = None) -> TrainConfig:
    cfg = validate(TrainConfig, values, where, lines)
    if not cfg.data.bench:
        raise ConfigError(f"{where}: data.bench: give the bench directory")
    return cfg


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> TrainConfig:
    """Read an `optiml train` YAML file; `overrides` are `section.key=value` strings (values parsed as
    YAML), named in errors as `--set section.key=value`."""
    values, lines = read_yaml_mapping_lines(path, "train config")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        section = values.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"--set {item!r}: section {parts[0]!r} is not a mapping")
        section[parts[1]] = yaml.safe_load(raw)
        lines[(parts[0], parts[1])] = None  # type: ignore[assignment]
    try:
        return config_from_dict(values, where=str(path), lines=lines)
    except ConfigError as e:
        set_keys = [item for item in overrides or [] if f": {item.partition('=')[0]}:" in str(e)]
        if set_keys:
            raise ConfigError(f"{e} (from --set {set_keys[-1]})") from None
        raise


# ---------------------------------------------------------------------------------- metaseq task
class FieldSpec(BaseModel):
    """One metaseq task option: its name, default, plain Python type, help, and allowed values."""

    name: str
    default: Any
    type: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None


# the data/mixture/packing/loss settings the metaseq task exposes as `--flags` of the same names
def metaseq_fields() -> Dict[str, FieldSpec]:
    """name -> (default, type, help) of every `DataFields` setting, in schema order, for generating the
    metaseq task's option dataclass (same names and defaults as `optiml train`'s `data:` section).

    `type` is plain typing (`Optional[Dict[str, float]]`, no pydantic metadata); options whose type is
    not a scalar need a text form on metaseq's command line (JSON, as `--benchmark-proportions`)."""
    out: Dict[str, FieldSpec] = {}
    for name, info in DataFields.model_fields.items():
        choices = [m for m in info.metadata if isinstance(m, Choices)]
        out[name] = FieldSpec(name=name, default=info.get_default(call_default_factory=True),
                              type=_plain(info.annotation), help=info.description or "",
                              choices=tuple(choices[0]) if choices else None)
    return out


def _plain(tp: Any) -> Any:
    """`tp` without `Annotated` metadata, at any depth."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _plain(args[0])
    if origin is Union:
        return Union[tuple(_plain(a) for a in args)]
    if origin is list:
        return List[_plain(args[0])]  # type: ignore[misc]
    if origin is dict:
        return Dict[_plain(args[0]), _plain(args[1])]  # type: ignore[misc]
    return tp
