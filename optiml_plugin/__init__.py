"""optiml: OPT-IML instruction meta-learning for metaseq, plus a local trainer and evaluator.

Importing the package registers the metaseq task and criterion when the real metaseq is importable
(that is what `metaseq-train --user-dir .../optiml_plugin` relies on); elsewhere it does nothing.
"""
__version__ = "0.1.0"


def _register_metaseq() -> None:
    import importlib.util

    try:
        has_metaseq = importlib.util.find_spec("metaseq.tasks") is not None
    except (ImportError, ValueError):
        has_metaseq = False
    if has_metaseq:
        from optiml_plugin import metaseq as _adapter  # noqa: F401  (registers on import)


_register_metaseq()
