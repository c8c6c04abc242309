"""Names and ids every part of optiml agrees on: OPT's special tokens, the bench's split and level names,
the recipe's packing and loss choices.

Why one module: the builder writes these names into bench directories, the stream, both trainers,
the sweep and the evaluator read them back, and metaseq's OPT checkpoints fix the ids. A second
spelling anywhere would split a bench or a checkpoint silently, so every module imports them from here.
This module imports nothing from optiml (or anything else), so any layer may use it.
"""
from __future__ import annotations

# ---- special tokens: OPT's vocabulary (and metaseq's Dictionary) put them at ids 0-3 ----------
BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIALS = (BOS, PAD, EOS, UNK)
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# ---- the BOS rule (which token opens an example) ----------------------------------------------
# One rule for training (both trainers, the metaseq task) and evaluation: every example opens with
# `</s>`, as every document did in OPT's pre-training (and as transformers' OPT tokenizer prepends);
# the example attends to it and its positions start there at 0. `<s>` (id 0) is never used.
EXAMPLE_START_ID = EOS_ID

# ---- split levels: how far an evaluation task is held out from training -----------------------
LEVEL_TRAIN = "train"
LEVEL_INSTANCES = "heldout_instances"     # unseen instances of training tasks
LEVEL_TASKS = "heldout_tasks"             # tasks never trained on
LEVEL_CATEGORIES = "heldout_categories"   # tasks of categories never trained on
LEVELS = (LEVEL_INSTANCES, LEVEL_TASKS, LEVEL_CATEGORIES)

# ---- split names: the bench's directories --------------------------------------------------------
TRAIN_SPLIT = "train"
VALID_SPLITS = tuple(f"valid_{level}" for level in LEVELS)
EVAL_SPLITS = tuple(f"{kind}_{level}" for level in LEVELS for kind in ("valid", "test"))
SPLITS = (TRAIN_SPLIT,) + EVAL_SPLITS

# ---- choices of the training recipe (the schema, the packer and the loss check against these) --
PACKING_STRATEGIES = ("best_fit", "sequential")
TRUNCATIONS = ("left", "right")
LOSS_NORMALIZATIONS = ("token", "example")

# ---- the paper's model presets for `optiml sweep` (YAML files in the preset directory) -----------
MODEL_PRESETS = ("1.3b", "30b", "175b")
PRESET_DIR_ENV = "OPTIML_PRESET_DIR"      # environment variable naming another preset directory
