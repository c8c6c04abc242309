"""The training data path: bench -> mixture -> stream -> tokenizer -> packer -> batches.

Reads a bench directory through `optiml_plugin.benchfiles`; imports neither metaseq nor transformers
(docs/ARCHITECTURE.md)."""
