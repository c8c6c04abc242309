"""The data core: records, sources, bench building, mixture, stream, tokenizer, packer.

Imports neither metaseq nor transformers (see docs/ARCHITECTURE.md)."""
