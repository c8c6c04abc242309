"""With the real metaseq: the task and criterion register and the task refuses unsafe model configs."""
from __future__ import annotations

import importlib.util
from argparse import Namespace

import pytest


def _has_metaseq() -> bool:
    try:
        return importlib.util.find_spec("metaseq.tasks") is not None
    except (ImportError, ValueError):
        return False


pytestmark = [pytest.mark.metaseq,
              pytest.mark.skipif(not _has_metaseq(), reason="metaseq.tasks is not importable (install "
                                 "metaseq from its git repository, see docs/metaseq.md)")]


def test_task_and_criterion_are_registered():
    import optiml_plugin  # noqa: F401  (registers)
    from metaseq.criterions import CRITERION_REGISTRY
    from metaseq.tasks import TASK_REGISTRY

    assert TASK_REGISTRY["instruction_meta_learning"].__name__ == "InstructionMetaLearningTask"
    assert CRITERION_REGISTRY["target_only_cross_entropy"].logging_outputs_can_be_summed()


def test_dictionary_is_padded_to_a_multiple_of_8():
    from optiml_plugin.metaseq.task import build_dictionary

    d = build_dictionary(50265)
    assert len(d) == 50272 and (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)


def test_model_without_doc_sep_is_refused():
    from optiml_plugin.errors import ConfigError
    from optiml_plugin.metaseq.options import check_model_cfg

    with pytest.raises(ConfigError, match="--self-attn-doc-sep 2"):
        check_model_cfg(Namespace(self_attn_doc_sep=-1, attn_variant="default"), True)
