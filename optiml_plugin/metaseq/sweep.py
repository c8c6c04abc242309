"""Paper presets -> a hyperparameter grid -> `metaseq-train` command lines and SLURM scripts.

Why: reproducing OPT-IML at 1.3B/30B/175B is a cluster job driven by metaseq's launcher
conventions (a grid of hyperparameters, run directories named from the swept values, one sbatch
job per grid point). This module renders those jobs from YAML presets (the paper's live in
`projects/opt_iml/presets/` and are installed with the package, `preset_dir`) without importing
metaseq, so a dry run works on any machine and the exact command lines can be reviewed (and tested)
before anything is submitted.

What it knows of metaseq's command line is here and only here: `LaunchConfig` (the metaseq-only
settings of the recipe: optimizer, schedule, loss scale), `HPARAMS` (every recipe key that has a
metaseq flag: its flag, its text form and its run-directory key) and the task's fixed flags. A preset's
`train:` keys and `--grid` keys are the recipe's names (`optiml_plugin/recipe.py`) plus `LaunchConfig`'s,
checked by the same schema; a recipe key of the local trainer alone is refused, saying so.
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union


import yaml
from pydantic import Field

from optiml_plugin import recipe
from optiml_plugin.conventions import PRESET_DIR_ENV, VALID_SPLITS
from optiml_plugin.data.mixture import validate_proportions
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import (Bool, Float, NonNegFloat, NonNegInt, PosInt, Section, choice,
                                  setting)
from optiml_plugin.yamlio import KeyPath, read_yaml_mapping_lines

# Where presets are found, first hit wins: $OPTIML_PRESET_DIR; the copy installed with the package
# (setup.py ships projects/opt_iml/presets as the package data optiml_plugin/presets); the source
# checkout's projects/opt_iml/presets (an editable install or a run from the repository).
PACKAGE_PRESETS = "presets"
CHECKOUT_PRESETS = Path(__file__).resolve().parents[2] / "projects" / "opt_iml" / "presets"
USER_DIR = Path(__file__).resolve().parents[1]   # optiml_plugin: metaseq's --user-dir

# Metaseq flags of the instruction_meta_learning task (optiml_plugin/metaseq/task.py).
TASK = "instruction_meta_learning"
CRITERION = "target_only_cross_entropy"
VALID_SUBSETS = VALID_SPLITS

RESET_FLAGS: Tuple[str, ...] = ("--reset-optimizer", "--reset-dataloader", "--reset-meters")


class LaunchConfig(Section):
    """`metaseq-train` settings of the recipe that the local trainer does not have (sweep only)."""

    optimizer: choice(("adam",)) = setting("adam", "metaseq optimizer")  # type: ignore[valid-type]
    fp16_adam_stats: Bool = setting(False, "fp16 Adam state (`fp16adam`); false: fp32 (`fp32adam`)")
    lr_scheduler: choice(("polynomial_decay",)) = setting(  # type: ignore[valid-type]
        "polynomial_decay", "metaseq schedule (with power 1 and end 0: linear decay to 0)")
    power: NonNegFloat = setting(1.0, "polynomial decay power")
    end_learning_rate: NonNegFloat = setting(0.0, "learning rate at max_update")
    fp16_init_scale: PosInt = setting(128, "initial dynamic loss scale")


def _fmt(value: Any) -> str:
    """A value as metaseq's argparse and the released checkpoint names spell it (5e-05, 1.0); a mapping
    as JSON (`--benchmark-caps`), a list of names as a comma list (`--valid-splits`)."""
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return ",".join(value)
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


@dataclass(frozen=True)
class HParam:
    """One recipe hyperparameter: its metaseq flag and its run-directory key (its type, default and
    help are the recipe schema's, optiml_plugin/recipe.py, under the same name).

    `in_name`: always part of the run-directory name (the keys of the released checkpoint names);
    any other hyperparameter enters the name only when a grid sweeps it over several values.
    """

    key: str
    flag: str
    name_key: Callable[[Any, Mapping[str, Any]], str]
    in_name: bool = False
    binary: bool = False          # a store_true flag: present when the value is true
    optional: bool = False        # presets may leave it unset: the task's default is the recipe's


def _k(fmt: str) -> Callable[[Any, Mapping[str, Any]], str]:
    return lambda v, cfg: fmt.format(_fmt(v))


# Order matters twice: command lines list flags in this order, and run-directory names list their
# keys in this order, which is the released checkpoints' order (eps_4096.docsep_2.mu4000.wu60.bsz8.
# clip1.0.fp32adam.rs1234.lr5e-05) less `docsep_2`: documents are masked by segment ids, so
# `--self-attn-doc-sep` is not rendered (metaseq would build its doc-sep mask and positions only for
# `segment_attention` to replace them).
HPARAMS: Tuple[HParam, ...] = (
    HParam("eps", "--eps", _k("eps_{}"), in_name=True),
    HParam("max_update", "--max-update", _k("mu{}"), in_name=True),
    HParam("warmup_updates", "--warmup-updates", _k("wu{}"), in_name=True),
    HParam("batch_size", "--batch-size", _k("bsz{}"), in_name=True),
    HParam("clip_norm", "--clip-norm", _k("clip{}"), in_name=True),
    HParam("optimizer", "--optimizer",
           lambda v, cfg: f"{'fp16' if cfg.get('fp16_adam_stats') else 'fp32'}{v}", in_name=True),
    HParam("seed", "--seed", _k("rs{}"), in_name=True),
    HParam("lr", "--lr", _k("lr{}"), in_name=True),
    HParam("tokens_per_sample", "--tokens-per-sample", _k("tps{}")),
    HParam("adam_betas", "--adam-betas", lambda v, cfg: f"b2_{v[1]}"),
    HParam("fp16_adam_stats", "--fp16-adam-stats", _k("fp16stats{}"), binary=True),
    HParam("adam_eps", "--adam-eps", _k("adameps{}")),
    HParam("weight_decay", "--weight-decay", _k("wd{}")),
    HParam("lr_scheduler", "--lr-scheduler", _k("{}")),
    HParam("power", "--power", _k("pow{}")),
    HParam("end_learning_rate", "--end-learning-rate", _k("endlr{}")),
    HParam("dropout", "--dropout", _k("dr{}")),
    HParam("attention_dropout", "--attention-dropout", _k("atdr{}")),
    HParam("update_freq", "--update-freq", _k("uf{}")),
    HParam("fp16_init_scale", "--fp16-init-scale", _k("initscale{}")),
    HParam("packing_strategy", "--packing-strategy", _k("pack_{}")),
    HParam("packing_window", "--packing-window", _k("pw{}"), optional=True),
    HParam("truncation", "--truncation", _k("trunc_{}"), optional=True),
    HParam("benchmark_caps", "--benchmark-caps", lambda v, cfg: "caps_" + "_".join(f"{k}{n}" for k, n in v.items()),
           optional=True),
    HParam("shuffle_buffer", "--shuffle-buffer", _k("shuf{}"), optional=True),
    HParam("loss_normalization", "--loss-normalization", _k("norm_{}"), optional=True),
    HParam("valid_splits", "--valid-splits", lambda v, cfg: "vs_" + "_".join(v), optional=True),
    HParam("max_train_tasks", "--max-train-tasks", _k("ntasks{}"), optional=True),
    HParam("metaicl_zipf_a", "--metaicl-zipf-a", _k("zipf{}"), optional=True),
    HParam("metaicl_suffix_loss", "--metaicl-suffix-loss", lambda v, cfg: "suffix" if v else "nosuffix",
           binary=True, optional=True),
    HParam("fewshot_share", "--fewshot-share", lambda v, cfg: "fewshot_" + "_".join(
        f"{k}{_fmt(x)}" for k, x in sorted(v.items())), optional=True),
    HParam("max_demonstrations", "--max-demonstrations", _k("maxk{}"), optional=True),
    HParam("max_record_chars", "--max-record-chars", _k("maxchars{}"), optional=True),
    HParam("save_every", "--save-interval-updates", _k("si{}")),
    HParam("valid_every", "--validate-interval-updates", _k("vi{}")),
    HParam("max_valid_examples_per_task", "--max-valid-examples-per-task", _k("mve{}")),
)
HPARAM_BY_KEY: Dict[str, HParam] = {h.key: h for h in HPARAMS}
# Short names accepted by --grid: the run-directory keys of the released checkpoints.
ALIASES = {"bsz": "batch_size", "mu": "max_update", "wu": "warmup_updates", "rs": "seed",
           "clip": "clip_norm", "tps": "tokens_per_sample", "uf": "update_freq", "wd": "weight_decay",
           "dr": "dropout", "pack": "packing_strategy"}
# recipe keys the mixture preset sets (its `eps` and `proportions`), not the recipe or the grid
MIXTURE_KEYS = ("eps", "benchmark_proportions")


def _recipe_key(key: str) -> bool:
    return key in recipe.SECTION_OF


def coerce(key: str, value: Any, where: str, lines: Optional[Dict[KeyPath, int]] = None,
           prefix: KeyPath = ()) -> Any:
    """One hyperparameter value checked by the schema's type for `key` (the recipe's, or `LaunchConfig`'s;
    YAML reads `5e-5` as a string, the schema parses it). `lines`/`prefix` locate the key in a preset
    file for errors."""
    name = ".".join(map(str, prefix + (key,)))
    head = recipe.located(where, lines, prefix + (key,))
    if key in LaunchConfig.model_fields:
        return getattr(recipe.validate(LaunchConfig, {key: value}, where, lines, prefix), key)
    if key in MIXTURE_KEYS:
        raise ConfigError(f"{head}: {name}: set by the mixture preset (its eps and proportions), not here")
    if key in recipe.RENAMED:
        raise ConfigError(f"{head}: {name}: now {recipe.RENAMED[key]}")
    if _recipe_key(key) and key not in HPARAM_BY_KEY:
        raise ConfigError(f"{head}: {name}: "
                          f"{recipe.SECTION_OF[key]}.{key} is a setting of the local trainer (`optiml train`) "
                          f"with no metaseq flag")
    if not _recipe_key(key):
        raise ConfigError(f"{head}: {name}: unknown hyperparameter; known: "
                          f"{sorted(set(HPARAM_BY_KEY) | set(LaunchConfig.model_fields))}")
    return recipe.check_value(key, value, where, lines, prefix)


def default(key: str) -> Any:
    """The schema's default of a flat hyperparameter key (recipe or launch)."""
    if key in LaunchConfig.model_fields:
        return LaunchConfig.model_fields[key].get_default(call_default_factory=True)
    return recipe.default(key)


# ----------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class MixturePreset:
    name: str
    tag: str
    eps: int
    proportions: Dict[str, float]
    path: Path


@dataclass(frozen=True)
class ModelPreset:
    """A model size with its cluster shape, merged with the recipe and the mixture it names."""

    name: str
    path: Path
    layers: int
    embed_dim: int
    ffn_embed_dim: int
    attention_heads: int
    model_parallel: int
    restore_file: str
    gpus: int
    gpus_per_node: int
    time_minutes: int
    train: Dict[str, Any]
    max_train: Dict[str, Any]
    global_batch: Optional[int]
    mixture: MixturePreset
    recipe: str = ""
    fixed_flags: Tuple[str, ...] = ()   # the recipe's `metaseq_flags`: settings that are not hyperparameters

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def data_parallel(self) -> int:
        return self.gpus // self.model_parallel

    def sequences_per_step(self, cfg: Mapping[str, Any]) -> int:
        return int(cfg["batch_size"]) * self.data_parallel * int(cfg.get("update_freq", 1))


def preset_dir(override: Union[str, Path, None] = None) -> Path:
    """The preset folder: `override` (--preset-dir), else $OPTIML_PRESET_DIR, else the installed
    package data, else the source checkout's projects/opt_iml/presets."""
    chosen = override or os.environ.get(PRESET_DIR_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_dir():
            raise ConfigError(f"preset directory {path} not found (from "
                              f"{'--preset-dir' if override else '$' + PRESET_DIR_ENV})")
        return path
    for path in (installed_presets(), CHECKOUT_PRESETS):
        if path is not None and path.is_dir():
            return path
    raise ConfigError(f"no preset directory: neither the package data optiml_plugin/{PACKAGE_PRESETS} "
                      f"nor {CHECKOUT_PRESETS} exists; set ${PRESET_DIR_ENV}, pass --preset-dir DIR "
                      f"or --preset-file PATH")


def installed_presets() -> Optional[Path]:
    """The presets installed as package data (`optiml_plugin/presets`), if this install has them."""
    from importlib.resources import files

    path = Path(str(files("optiml_plugin") / PACKAGE_PRESETS))
    return path if path.is_dir() else None


class _File(Section):
    kind: str = setting(..., "what this preset is: mixture, recipe or model")

    @classmethod
    def read(cls, path: Path, kind: str) -> Tuple[Any, Dict[KeyPath, int]]:
        """The preset at `path`, checked by its schema (errors name file, line and key)."""
        data, lines = read_yaml_mapping_lines(path, "preset")
        if data.get("kind") != kind:
            raise ConfigError(f"{recipe.located(str(path), lines, ('kind',))}: kind: must be {kind!r}, "
                              f"got {data.get('kind')!r}")
        return recipe.validate(cls, data, str(path), lines), lines


class MixtureFile(_File):
    name: Annotated[str, Field(min_length=1)] = setting(..., "mixture name")
    tag: Annotated[str, Field(min_length=1)] = setting(..., "its key in run-directory names")
    eps: NonNegInt = setting(..., "examples-proportional cap per task (0: no cap)")
    proportions: Dict[str, Float] = setting(..., "benchmark shares, summing to 1")


class RecipeFile(_File):
    name: Annotated[str, Field(min_length=1)] = setting(..., "recipe name")
    train: Dict[str, Any] = setting({}, "hyperparameters by their recipe names")
    metaseq_flags: List[Union[str, int, float]] = setting([], "fixed metaseq command-line words")


class ModelShape(Section):
    layers: PosInt = setting(..., "decoder layers")
    embed_dim: PosInt = setting(..., "model dimension")
    ffn_embed_dim: PosInt = setting(..., "feed-forward dimension")
    attention_heads: PosInt = setting(..., "attention heads")
    model_parallel: PosInt = setting(..., "tensor (model) parallel size")


class Cluster(Section):
    gpus: PosInt = setting(..., "GPUs in all")
    gpus_per_node: PosInt = setting(..., "GPUs per node")
    time_minutes: PosInt = setting(..., "SLURM time limit")


class MaxSection(Section):
    train: Dict[str, Any] = setting({}, "hyperparameters of the -Max variant")


class ModelFile(_File):
    name: Annotated[str, Field(min_length=1)] = setting(..., "model size name")
    recipe: Annotated[str, Field(min_length=1)] = setting(..., "the recipe preset, relative to this file")
    mixture: Annotated[str, Field(min_length=1)] = setting(..., "the mixture preset, relative to this file")
    model: ModelShape = setting(..., "architecture and model parallelism")
    restore_file: Annotated[str, Field(min_length=1)] = setting(..., "OPT checkpoint under --opt-checkpoints")
    cluster: Cluster = setting(..., "cluster shape")
    train: Dict[str, Any] = setting({}, "hyperparameters over the recipe's")
    global_batch: Optional[PosInt] = setting(None, "sequences per update, checked against the shape")
    max: MaxSection = Field(default_factory=MaxSection)


def _train_section(data: Mapping[str, Any], path: Path, section: KeyPath,
                   lines: Dict[KeyPath, int]) -> Dict[str, Any]:
    return {k: coerce(k, v, str(path), lines, section) for k, v in data.items()}


def load_mixture_preset(path: Union[str, Path]) -> MixturePreset:
    """A mixture preset; its shares must cover every benchmark it names and sum to 1."""
    path = Path(path)
    data, lines = MixtureFile.read(path, "mixture")
    try:
        props = validate_proportions(data.proportions, benchmarks=list(data.proportions))
    except ConfigError as e:
        raise ConfigError(f"{recipe.located(str(path), lines, ('proportions',))}: proportions: {e}") from None
    return MixturePreset(name=data.name, tag=data.tag, eps=data.eps, proportions=props, path=path)


def load_recipe(path: Union[str, Path]) -> Tuple[str, Dict[str, Any], Tuple[str, ...]]:
    """(name, hyperparameters, fixed metaseq flags) of a recipe preset."""
    path = Path(path)
    data, lines = RecipeFile.read(path, "recipe")
    return (data.name, _train_section(data.train, path, ("train",), lines),
            tuple(str(f) for f in data.metaseq_flags))


def resolve_preset_path(name_or_path: Union[str, Path], directory: Union[str, Path, None] = None) -> Path:
    """A preset name (`30b`) in the preset directory (`preset_dir(directory)`), or a path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text)
    folder = preset_dir(directory)
    path = folder / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {text!r}; {folder} has "
                          f"{sorted(p.stem for p in folder.glob('*.yaml'))}")
    return path


def load_model_preset(name_or_path: Union[str, Path], mixture_path: Union[str, Path, None] = None,
                      directory: Union[str, Path, None] = None) -> ModelPreset:
    """Load a model preset with the recipe and mixture it names (paths relative to the preset)."""
    path = resolve_preset_path(name_or_path, directory)
    data, lines = ModelFile.read(path, "model")
    recipe_name, train, fixed_flags = load_recipe(path.parent / data.recipe)
    train.update(_train_section(data.train, path, ("train",), lines))
    missing = [h.key for h in HPARAMS if h.key not in train and h.key != "eps" and not h.optional]
    if missing:
        raise ConfigError(f"{path}: the recipe and 'train' leave {missing} unset")
    mixture = load_mixture_preset(Path(mixture_path) if mixture_path is not None else path.parent / data.mixture)
    train["eps"] = mixture.eps
    shape, cluster = data.model, data.cluster
    preset = ModelPreset(
        name=data.name, path=path, recipe=recipe_name, fixed_flags=fixed_flags,
        layers=shape.layers, embed_dim=shape.embed_dim, ffn_embed_dim=shape.ffn_embed_dim,
        attention_heads=shape.attention_heads, model_parallel=shape.model_parallel,
        restore_file=data.restore_file, gpus=cluster.gpus, gpus_per_node=cluster.gpus_per_node,
        time_minutes=cluster.time_minutes, train=train,
        max_train=_train_section(data.max.train, path, ("max", "train"), lines),
        global_batch=data.global_batch, mixture=mixture)
    _check_shapes(preset)
    return preset


def _check_shapes(p: ModelPreset) -> None:
    """Cluster and architecture numbers must divide evenly, and the batch must be the paper's."""
    checks = [
        (p.gpus % p.gpus_per_node == 0, f"cluster.gpus {p.gpus} is not a multiple of "
                                         f"cluster.gpus_per_node {p.gpus_per_node}"),
        (p.gpus % p.model_parallel == 0, f"cluster.gpus {p.gpus} is not a multiple of "
                                          f"model.model_parallel {p.model_parallel}"),
        (p.embed_dim % p.attention_heads == 0, f"model.embed_dim {p.embed_dim} is not a multiple of "
                                                f"model.attention_heads {p.attention_heads}"),
        (p.attention_heads % p.model_parallel == 0, f"model.attention_heads {p.attention_heads} is "
                                                     f"not a multiple of model.model_parallel "
                                                     f"{p.model_parallel}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{p.path}: {msg}")
    got = p.sequences_per_step(p.train)
    if p.global_batch is not None and got != p.global_batch:
        raise ConfigError(
            f"{p.path}: field 'global_batch' is {p.global_batch} but batch_size {p.train['batch_size']}"
            f" x {p.data_parallel} data-parallel ranks x update_freq {p.train['update_freq']} = {got}")


# -------------------------------------------------------------------------------------------- grid
def parse_grid(specs: Sequence[str]) -> Dict[str, List[Any]]:
    """`["lr=1e-5,5e-5", "bsz=4"]` -> {"lr": [1e-05, 5e-05], "batch_size": [4]}, values checked."""
    grid: Dict[str, List[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = ALIASES.get(key.strip().lstrip("-").replace("-", "_"),
                          key.strip().lstrip("-").replace("-", "_"))
        if not sep or not values.strip():
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. lr=1e-5,5e-5)")
        if key in MIXTURE_KEYS:
            raise ConfigError(f"--grid {spec!r}: {key} belongs to the mixture preset; "
                              f"pass --mixture-file with another one")
        if key in grid:
            raise ConfigError(f"--grid {spec!r}: {key} is given twice")
        if key in HPARAM_BY_KEY and (isinstance(default(key), list) or key == "benchmark_caps"):
            raise ConfigError(f"--grid {spec!r}: {key} cannot be swept from the command line; "
                              f"edit the recipe or pass --preset-file")
        grid[key] = [coerce(key, _scalar(v), f"--grid {spec!r}") for v in values.split(",")]
    return grid


def _scalar(text: str) -> Any:
    """A --grid value as YAML reads it (`4` an int, `true` a bool, `5e-5` a string the schema parses)."""
    try:
        return yaml.safe_load(text.strip())
    except yaml.YAMLError:
        return text.strip()


@dataclass(frozen=True)
class Run:
    """One grid point: its full hyperparameter config, the swept keys and its run-directory name."""

    config: Dict[str, Any]
    swept: Tuple[str, ...]
    name: str


def expand(preset: ModelPreset, grid: Optional[Mapping[str, Sequence[Any]]] = None,
           max_variant: bool = False, prefix: str = "optiml") -> List[Run]:
    """The grid's cartesian product over the preset's values (metaseq launcher semantics)."""
    base = dict(preset.train)
    if max_variant:
        base.update(preset.max_train)
    grid = dict(grid or {})
    swept = tuple(k for k in (h.key for h in HPARAMS) if len(grid.get(k, ())) > 1)
    keys = [k for k in (h.key for h in HPARAMS) if k in grid]
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = dict(base)
        cfg.update(zip(keys, values))
        if cfg["update_freq"] != 1:
            raise ConfigError(
                f"update_freq {cfg['update_freq']}: the instruction_meta_learning task streams "
                f"endlessly and supports only update_freq 1; raise batch_size or the GPU count instead")
        cfg["total_num_update"] = cfg["max_update"]   # linear decay reaches 0 at the last step
        runs.append(Run(config=cfg, swept=swept,
                        name=run_name(preset, cfg, swept, max_variant=max_variant, prefix=prefix)))
    return runs


def run_name(preset: ModelPreset, cfg: Mapping[str, Any], swept: Sequence[str] = (),
             max_variant: bool = False, prefix: str = "optiml") -> str:
    """`{prefix}[.max].{mixture tag}.{size}.{keys}.ngpu{N}`, as metaseq's launcher names save dirs."""
    keys = [h.name_key(cfg[h.key], cfg) for h in HPARAMS
            if (h.in_name or h.key in swept) and h.key in cfg]
    head = [prefix] + (["max"] if max_variant else []) + [preset.mixture.tag, preset.name]
    return ".".join(head + keys + [f"ngpu{preset.gpus}"]).replace(",", "_").replace(" ", "")


# ----------------------------------------------------------------------------------- command lines
@dataclass
class Paths:
    """Where things are on the cluster. None renders a placeholder (dry runs only)."""

    data: Optional[str] = None              # the bench directory (`optiml bench build`)
    bpe_dir: Optional[str] = None           # gpt2-vocab.json + gpt2-merges.txt
    opt_checkpoints: Optional[str] = None   # OPT checkpoints, resharded for model parallelism
    checkpoints_dir: Optional[str] = None   # run directories go here
    user_dir: Optional[str] = None          # optiml_plugin as seen from the cluster

    placeholders: Dict[str, str] = field(default_factory=lambda: {
        "data": "<BENCH>", "bpe_dir": "<BPE_DIR>", "opt_checkpoints": "<OPT_CHECKPOINTS>",
        "checkpoints_dir": "<CHECKPOINTS_DIR>"})

    def get(self, name: str, dry_run: bool) -> str:
        value = getattr(self, name)
        if value:
            return str(value)
        if dry_run:
            return self.placeholders[name]
        raise ConfigError(f"--{name.replace('_', '-')} is required to launch (or use --dry-run)")


def save_dir(run: Run, paths: Paths, dry_run: bool) -> str:
    return f"{paths.get('checkpoints_dir', dry_run).rstrip('/')}/{run.name}"


def distributed_port(run_name_: str) -> int:
    """A port derived from the run name, so re-rendering a sweep gives identical scripts."""
    return 15000 + zlib.crc32(run_name_.encode("utf-8")) % 40000


def hparam_args(cfg: Mapping[str, Any]) -> List[str]:
    out: List[str] = []
    for h in HPARAMS:
        if h.key not in cfg:
            continue
        value = cfg[h.key]
        if value is None:   # the task's default (null in the schema: no caps, 10 x batch rows)
            continue
        if h.binary:
            out += [h.flag] if value else []
        else:
            out += [h.flag, _fmt(value)]
        if h.key == "max_update":
            out += ["--total-num-update", _fmt(cfg["total_num_update"])]
    return out


def train_command(preset: ModelPreset, run: Run, paths: Paths, launcher: str = "metaseq-train",
                  dry_run: bool = False, resume_args: bool = True) -> List[str]:
    """The full `metaseq-train` argv of one grid point (first launch: restore OPT and reset)."""
    cmd = [launcher]
    if launcher == "metaseq-train":
        cmd += ["--user-dir", paths.user_dir or str(USER_DIR)]
    bpe = paths.get("bpe_dir", dry_run).rstrip("/")
    cmd += [paths.get("data", dry_run),
            "--task", TASK, "--criterion", CRITERION,
            "--vocab-filename", f"{bpe}/gpt2-vocab.json", "--merges-filename", f"{bpe}/gpt2-merges.txt",
            "--benchmark-proportions", json.dumps(preset.mixture.proportions, separators=(",", ":")),
            "--valid-subset", ",".join(run.config.get("valid_splits", VALID_SUBSETS)),
            "--model-parallel-size", str(preset.model_parallel),
            "--decoder-layers", str(preset.layers), "--decoder-embed-dim", str(preset.embed_dim),
            "--decoder-ffn-embed-dim", str(preset.ffn_embed_dim),
            "--decoder-attention-heads", str(preset.attention_heads)]
    cmd += list(preset.fixed_flags)
    cmd += hparam_args(run.config)
    cmd += ["--distributed-world-size", str(preset.gpus),
            "--distributed-port", str(distributed_port(run.name)),
            "--save-dir", save_dir(run, paths, dry_run)]
    if resume_args:
        cmd += restore_args(preset, paths, dry_run)
    return cmd


def restore_args(preset: ModelPreset, paths: Paths, dry_run: bool) -> List[str]:
    restore = f"{paths.get('opt_checkpoints', dry_run).rstrip('/')}/{preset.restore_file}"
    return ["--restore-file", restore] + list(RESET_FLAGS)


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def render_sbatch(preset: ModelPreset, run: Run, paths: Paths, launcher: str = "metaseq-train",
                  dry_run: bool = False, partition: Optional[str] = None,
                  cpus_per_task: int = 12, account: Optional[str] = None) -> str:
    """An sbatch script for one run: one task per GPU, requeued on preemption.

    The OPT checkpoint and the resets apply only to the first launch; once the run has written
    `checkpoint_last`, a requeued job resumes from it (metaseq's default restore file) instead of
    starting over from OPT with fresh optimizer and data state.
    """
    sdir = save_dir(run, paths, dry_run)
    base = shell_join(train_command(preset, run, paths, launcher, dry_run, resume_args=False))
    restore = shell_join(restore_args(preset, paths, dry_run))
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={run.name}",
        f"#SBATCH --nodes={preset.nodes}",
        f"#SBATCH --ntasks-per-node={preset.gpus_per_node}",
        f"#SBATCH --gpus-per-node={preset.gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "#SBATCH --mem=0",
        f"#SBATCH --time={preset.time_minutes}",
        f"#SBATCH --output={sdir}/train.log",
        f"#SBATCH --error={sdir}/train.stderr.%j",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=B:USR1@180",
    ]
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    if account:
        header.append(f"#SBATCH --account={account}")
    seqs = preset.sequences_per_step(run.config)
    body = [
        "",
        f"# {preset.name}: {preset.gpus} GPUs = {preset.nodes} nodes x {preset.gpus_per_node}; "
        f"model parallel {preset.model_parallel}, {preset.data_parallel} data-parallel ranks",
        f"# {seqs} sequences x {run.config['tokens_per_sample']} tokens per step, "
        f"{run.config['max_update']} steps",
        "export OMP_NUM_THREADS=2",
        "export NCCL_ASYNC_ERROR_HANDLING=1",
        "trap 'scontrol requeue $SLURM_JOB_ID' USR1",
        "",
        f"SAVE_DIR={shlex.quote(sdir)}",
        'mkdir -p "$SAVE_DIR"',
        'if ls "$SAVE_DIR"/checkpoint_last*.pt >/dev/null 2>&1; then',
        "  RESTORE=()   # resume this run from its own checkpoint_last",
        "else",
        f"  RESTORE=({restore})",
        "fi",
        f'srun --label {base} "${{RESTORE[@]}}" &',
        "wait $!",
        "",
    ]
    return "\n".join(header + body)
