"""optiml: OPT-IML instruction meta-learning as a metaseq plugin, with a local trainer and evaluator."""
from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    # the single-machine trainer and `optiml demo` (transformers' OPT)
    "local": ["transformers>=4.45", "tensorboard>=2.10"],
    # metrics for `optiml eval`
    # (mecab-python3 + ipadic: sacrebleu's ja-mecab BLEU tokenizer for Japanese targets)
    "eval": ["rouge-score>=0.1.2", "sacrebleu>=2.0", "transformers>=4.45", "mecab-python3>=1.0.6",
             "ipadic>=1.0"],
    # Parquet sources for `optiml bench build`
    "parquet": ["pyarrow>=10"],
    # the `datasets` source: Hugging Face datasets on disk or in the hub cache
    "hf": ["datasets>=2.14"],
    "dev": ["pytest>=7", "hypothesis>=6", "pyarrow>=10"],
    # a metaseq environment (docs/metaseq.md): the plugin's own tests there, `pytest -m metaseq`
    # (metaseq itself, torch and fairscale are installed from their repositories first)
    "metaseq": ["pytest>=7", "hypothesis>=6"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})
# `optiml eval suite` (the paper's Tab 9 / Tab 14 through lm-evaluation-harness). Not in `all`:
# it pulls datasets, pandas, scikit-learn, accelerate and peft (about 2 minutes to install);
# tests that need it skip without it.
EXTRAS["lmeval"] = ["lm-eval[hf]>=0.4.13"]
# benchmarks/trl_sft.py only (TRL's SFTTrainer beside optiml's step); not in `all`
EXTRAS["trl"] = ["trl>=1.16"]

setup(
    name="optiml",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # the paper's presets live beside their project (projects/opt_iml/presets) and are installed as the
    # package data optiml_plugin/presets, so `optiml sweep --preset 30b` works from any install
    packages=find_packages(include=["optiml_plugin", "optiml_plugin.*"]) + ["optiml_plugin.presets"],
    package_dir={"optiml_plugin.presets": "projects/opt_iml/presets"},
    install_requires=[
        "torch>=2.0",
        "numpy>=1.21",
        "tokenizers>=0.13",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pydantic>=2",
        "orjson>=3.6",  # bench rows written 5x faster, byte for byte json's (benchfiles.py)
    ],
    extras_require=EXTRAS,
    package_data={"optiml_plugin.bench": ["taxonomy.yaml"], "optiml_plugin.presets": ["*.yaml"],
                  "optiml_plugin.eval": ["sni_splits/*.txt", "presets/*.yaml", "presets/lmeval_tasks/*/*.yaml",
                                         "presets/lmeval_tasks/*/_*_yaml", "presets/lmeval_tasks/*/*.py"]},
    entry_points={"console_scripts": [
        "optiml=optiml_plugin.cli:main",
        "optiml-metaseq-train=optiml_plugin.metaseq.train_cli:main",
    ]},
    license="MIT",
)
