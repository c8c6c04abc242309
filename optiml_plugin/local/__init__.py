"""Single-machine trainer on transformers' OPT (the only part of the package besides eval backends that
imports transformers): model construction, document-masked attention backends, train loop, checkpoints."""
