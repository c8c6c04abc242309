"""The bench builder: sources -> records -> taxonomy, splits, templates, decontamination -> bench directory.

An offline program of its own; the training path (`optiml_plugin.data`) reads only what it writes,
through `optiml_plugin.benchfiles`. Imports neither metaseq nor transformers (docs/ARCHITECTURE.md)."""
