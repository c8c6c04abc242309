"""lm-evaluation-harness (`lm-eval`) as the runner of the paper's other suites (Tab 9, Tab 14).

Why here: lm-eval is an optional, heavy dependency (datasets, pandas, scikit-learn, accelerate),
so it is imported only when a suite runs, never when the core loads. The model is lm-eval's own
`HFLM` on a transformers directory; directories written by optiml's trainer hold only a
`tokenizers` tokenizer.json, so a transformers tokenizer is built from it with OPT's convention
that every sequence starts with `</s>` (as HF's OPT tokenizer and optiml's own scoring do).
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from optiml_plugin.errors import ConfigError

INSTALL = "pip install 'optiml[lmeval]'   (or: pip install 'lm-eval[hf]')"


def require() -> Any:
    """The `lm_eval` module, or an error that says how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs lm-eval's [hf] extra)
    except ImportError as err:
        raise ConfigError(f"lm-eval suites need lm-evaluation-harness with its HF extra, which is "
                          f"not installed ({err}); install it with: {INSTALL}") from None
    return lm_eval


def transformers_tokenizer(model_dir: Path) -> Optional[Any]:
    """None when the directory has a transformers tokenizer (HFLM loads it), else one built from
    its OPT BPE files with `</s>` as BOS/EOS, `<pad>` and `<unk>` at OPT's ids."""
    if (model_dir / "tokenizer_config.json").is_file():
        return None
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from optiml_plugin.conventions import EOS, EOS_ID, PAD, UNK
    from optiml_plugin.data.tokenizer import OptTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # OptTokenizer.from_dir accepts every OPT BPE layout
        raw = Tokenizer.from_file(str(OptTokenizer.from_dir(model_dir).save(tmp)))
    raw.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK)


def load_model(model_dir: str, batch_size: int = 8, device: Optional[str] = None,
               dtype: Optional[str] = None) -> Any:
    """lm-eval's HFLM on a transformers model directory."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from optiml_plugin.eval.backends.hf import DTYPES

    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise ConfigError(f"{root}: not a transformers model directory (config.json missing); "
                          f"convert metaseq checkpoints with `optiml eval convert-metaseq` or pass "
                          f"--metaseq-checkpoint")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return HFLM(pretrained=str(root), tokenizer=transformers_tokenizer(root),
                device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                dtype=DTYPES[dtype or "float32"], batch_size=batch_size)


@lru_cache(maxsize=8)
def task_manager(include: Optional[str], builtin: bool) -> Any:
    """Indexing lm-eval's built-in tasks takes tens of seconds: one manager per configuration."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=builtin)


def evaluate(model: Any, tasks: List[str], shots: int, suite: Any, limit: Optional[int] = None,
             seed: int = 1234) -> Dict[str, Any]:
    """`lm_eval.simple_evaluate` of lm-eval `tasks` (with the suite's task configs) at one shot
    count: results, versions, sample counts."""
    import lm_eval

    tm = task_manager(None if suite.include is None else str(suite.include), suite.builtin_tasks)
    raw = lm_eval.simple_evaluate(model=model, tasks=list(tasks), num_fewshot=shots,
                                  task_manager=tm, limit=limit, log_samples=False, bootstrap_iters=1000,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    if raw is None:
        raise ConfigError(f"suite {suite.name}: lm-eval returned no results for {tasks}")
    return {k: raw.get(k) for k in ("results", "versions", "n-shot", "n-samples", "group_subtasks",
                                    "higher_is_better")}
