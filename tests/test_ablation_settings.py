"""The paper's §4 ablations as recipe settings that the metaseq task reads under the same names
(its flags are generated from the recipe's data fields): MetaICL, mixed prompts, task scaling."""
from __future__ import annotations

from argparse import Namespace
from typing import Optional

import pytest

from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq import options
from optiml_plugin.recipe import DataFields


def task_cfg(**kw) -> Namespace:
    got = {name: default for name, _, default, _, _ in options.task_fields()}
    return Namespace(**{**got, **kw})


def test_metaseq_flags_carry_the_ablation_settings():
    kinds = {name: kind for name, kind, _, _, _ in options.task_fields()}
    assert kinds["metaicl_zipf_a"] == Optional[float]   # a float flag, not an int one
    f = options.fields_from_cfg(task_cfg(metaicl_zipf_a=2.0, metaicl_suffix_loss=True, max_train_tasks=64,
                                         max_demonstrations=5))
    assert (f.metaicl_zipf_a, f.metaicl_suffix_loss, f.max_train_tasks) == (2.0, True, 64)
    g = options.fields_from_cfg(task_cfg(fewshot_share='{"flan": 0.5, "niv2": 0.25}'))
    assert g.fewshot_share == {"flan": 0.5, "niv2": 0.25}
    assert options.fields_from_cfg(task_cfg()) == DataFields()


def test_bad_ablation_values_name_the_setting():
    with pytest.raises(ConfigError, match="fewshot_share"):
        options.fields_from_cfg(task_cfg(fewshot_share='{"flan": 1.5}'))
    with pytest.raises(ConfigError, match="metaicl_zipf_a"):
        options.fields_from_cfg(task_cfg(metaicl_zipf_a=-1.0))
