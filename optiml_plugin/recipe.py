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
from typing import Annotated, Any, Dict, List, Optional, Tuple, Type, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict,
                      ValidationError)

from optiml_plugin.conventions import (EVAL_SPLITS, LOSS_NORMALIZATIONS, PACKING_STRATEGIES, TRUNCATIONS,
                                      VALID_SPLITS)
from optiml_plugin.errors import ConfigError
from optiml_plugin.yamlio import KeyPath, read_yaml_mapping_lines


def number(value: Any) -> Any:
    """A YAML number, or a string that parses as one (YAML 1.1 reads `1e-4` as a string): the one
    number rule of every file the user writes (recipe, presets, proportions, build config)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value


def choice(options: Tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {list(options)}")
        return value
    return Annotated[str, Strict(), AfterValidator(check)]


Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, BeforeValidator(number), Field(allow_inf_nan=False)]
PosFloat = Annotated[float, BeforeValidator(number), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, BeforeValidator(number), Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, BeforeValidator(number), Field(ge=0, le=1)]
Bool = Annotated[bool, Strict()]
Strategy = choice(PACKING_STRATEGIES)
Truncation = choice(TRUNCATIONS)
Normalization = choice(LOSS_NORMALIZATIONS)
EvalSplit = choice(EVAL_SPLITS)


def setting(default: Any, text: str, **kw: Any) -> Any:
    return Field(default, description=text, **kw)


class Section(BaseModel):
    """A config section: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------- sections
class DataFields(Section):
    """Mixture, packing, validation and loss: the settings the metaseq task shares (its flags:
    `metaseq.options.TaskOptions`, the same names and defaults)."""

    tokens_per_sample: PosInt = setting(2048, "tokens per packed row (paper: 2048)", ge=2)
    packing_strategy: Strategy = setting(  # type: ignore[valid-type]
        "best_fit", "best_fit (bounded window; fewer pad tokens) or sequential (next-fit, as the authors)")
    packing_window: PosInt = setting(64, "open blocks the best_fit packer chooses among")
    truncation: Truncation = setting(  # type: ignore[valid-type]
        "left", "too-long examples: cut the source from the left (paper) or the right")
    benchmark_proportions: Optional[Dict[str, Float]] = setting(
        None, "benchmark shares; unlisted benchmarks share the rest by capped size (null: by size)")
    eps: NonNegInt = setting(4096, "examples-proportional cap per task (0: no cap)")
    benchmark_caps: Optional[Dict[str, PosInt]] = setting(None, "per-benchmark caps overriding eps")
    shuffle_buffer: Optional[NonNegInt] = setting(
        None, "packed rows held for shuffling (0: none; null: 10 x batch_size)")
    valid_splits: List[EvalSplit] = setting(  # type: ignore[valid-type]
        list(VALID_SPLITS), "bench splits scored by validation")
    max_valid_examples_per_task: NonNegInt = setting(
        250, "first N rows of every task in validation, in file order (paper §4.1; 0: all)")
    loss_normalization: Normalization = setting(  # type: ignore[valid-type]
        "token", "token: mean over target tokens (paper); example: mean of per-example means")
    max_train_tasks: Optional[PosInt] = setting(
        None, "task scaling (paper Tab 16): train on the first N training tasks of a fixed seeded order "
              "(nested: the first 16 are among the first 64); null: all")
    metaicl_zipf_a: Optional[PosFloat] = setting(
        None, "MetaICL training (§4.8): k demonstrations of the same task before each example, "
              "P(k) ~ (k+1)^-a for k <= max_demonstrations (paper: a = 2 or 4); null: off")
    metaicl_suffix_loss: Bool = setting(
        False, "MetaICL's suffix loss: loss on the first demonstration's target and everything after it")
    fewshot_share: Optional[Dict[str, Fraction]] = setting(
        None, "Flan-style mixed prompts: per benchmark, the share of examples rendered few-shot "
              "(k uniform on 1..max_demonstrations); unlisted benchmarks stay zero-shot; null: off")
    max_demonstrations: PosInt = setting(5, "most demonstrations before an example (MetaICL's K = 5)")
    max_record_chars: NonNegInt = setting(
        0, "characters kept of a row's source (its end) and target (its start) before tokenizing; longer "
           "rows are clipped and counted (0: 32 x tokens_per_sample)")


class DataConfig(DataFields):
    bench: str = setting("", "bench directory (`optiml bench build`)")
    tokenizer: str = setting("builtin", "builtin (BPE trained on the bench), model (model.checkpoint's own), or a "
                                      "tokenizer directory / tokenizer.json")
    builtin_vocab_size: PosInt = setting(2048, "vocabulary of the builtin tokenizer")
    batch_size: PosInt = setting(8, "rows per micro-batch per rank")


class ModelConfig(Section):
    preset: Optional[str] = setting("tiny", "local/model.py PRESETS (family-neutral shapes); null when config or "
                                          "checkpoint is given")
    family: str = setting("opt", "the preset's family: opt | llama | mistral | qwen2 | gemma | gpt_neox")
    config: Optional[str] = setting(None, "a transformers config.json (or its directory) of any decoder: random init")
    checkpoint: Optional[str] = setting(None, "a transformers checkpoint directory of any decoder (OPT, Llama, "
                                            "Mistral, Qwen2, Gemma, GPT-NeoX; a hub name with network)")
    dropout: Fraction = setting(0.1, "dropout, embeddings included (paper: 0.1); families without one ignore it")
    attention_dropout: Fraction = setting(0.0, "attention dropout (metaseq's default; the recipe preset: 0.1)")
    overrides: Dict[str, Any] = setting({}, "the model config's own fields over the preset/config/checkpoint")


class OptimConfig(Section):
    lr: PosFloat = setting(5e-5, "peak learning rate (paper: 5e-5 at 30B/175B)")
    adam_betas: List[Fraction] = setting([0.9, 0.95], "Adam betas", min_length=2, max_length=2)
    adam_eps: PosFloat = setting(1e-8, "Adam epsilon (torch's default; the paper's runs: 1e-6)")
    weight_decay: NonNegFloat = setting(0.0, "not applied to biases and norms; the paper does not state it")
    warmup_updates: NonNegInt = setting(60, "linear warmup updates, then linear decay to 0 at max_update")
    max_update: PosInt = setting(1000, "updates to train")
    clip_norm: NonNegFloat = setting(1.0, "gradient norm clip")
    update_freq: PosInt = setting(1, "micro-batches per update (gradient accumulation)")


class RunConfig(Section):
    out_dir: str = setting("runs/train", "run directory")
    seed: NonNegInt = setting(1, "seed of the stream, the shuffle and the model init")
    device: choice(("auto", "cpu", "cuda")) = setting("auto", "auto | cpu | cuda")  # type: ignore[valid-type]
    precision: choice(("auto", "fp32", "bf16", "fp16")) = setting(  # type: ignore[valid-type]
        "auto", "auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16")
    attention: str = setting("auto", "auto | per_example | dense | flex | causal (no document mask)")
    distributed: choice(("auto", "none", "ddp", "fsdp")) = setting(  # type: ignore[valid-type]
        "auto", "auto (ddp when WORLD_SIZE > 1) | none | ddp | fsdp")
    threads: Union[choice(("auto",)), NonNegInt] = setting(  # type: ignore[valid-type]
        "auto", "CPU threads for torch: auto (1 for models under 20M parameters on CPU, else torch's default) "
                "| N | 0 (torch's default)")
    log_every: PosInt = setting(10, "updates between log lines")
    valid_every: NonNegInt = setting(100, "updates between validations (0: only at the end)")
    save_every: NonNegInt = setting(100, "updates between checkpoints (0: only at the end)")
    keep_last: PosInt = setting(2, "checkpoints kept")
    tensorboard: Bool = setting(True, "write TensorBoard events")
    progress: Bool = setting(True, "show a progress bar")


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
# every setting by its one name (a recipe preset's flat `train:` keys, `--grid` keys), and its section
SECTION_OF: Dict[str, str] = {}
for _section, _cls in SECTIONS.items():
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
    "save_interval_updates": "run.save_every", "validate_interval_updates": "run.valid_every",
    "self_attn_doc_sep": "gone: documents are masked by segment ids (metaseq's --self-attn-doc-sep is not used)",
}


# -------------------------------------------------------------------------------------- validation
def _line(lines: Dict[KeyPath, Optional[int]], loc: KeyPath) -> Optional[int]:
    """The line of the deepest key of `loc` the file has (a missing key: its section's line); None for
    a key given on the command line (`lines` maps it to None)."""
    for i in range(len(loc), 0, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return None


def located(where: str, lines: Optional[Dict[KeyPath, int]], loc: KeyPath) -> str:
    """`file:line` of the key at `loc` (just `file` when the line is unknown): every config error's head."""
    line = _line(lines or {}, loc)
    return f"{where}:{line}" if line else where


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
    # an unknown key first: a misspelt key also makes its intended key "missing"
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in prefix + loc)
    head = located(where, lines, prefix + loc)
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
        head = located(where, lines, prefix)
        raise ConfigError(f"{head}: {'.'.join(map(str, prefix)) or 'config'} must be a mapping, "
                          f"got {type(values).__name__}")
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise schema_error(e, cls, where, lines, prefix) from None


def check_value(key: str, value: Any, where: str, lines: Optional[Dict[KeyPath, int]] = None,
                prefix: KeyPath = ()) -> Any:
    """One recipe value by its flat name `key` (a key of `SECTION_OF`: the sweep's presets and `--grid`),
    checked by its section's type."""
    return getattr(validate(SECTIONS[SECTION_OF[key]], {key: value}, where, lines, prefix), key)


def default(key: str) -> Any:
    """The schema's default of a flat recipe key."""
    return SECTIONS[SECTION_OF[key]].model_fields[key].get_default(call_default_factory=True)


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
