"""hbt: hybrid batch training of multilingual dense retrievers.

The data path reads top to bottom: :mod:`hbt.config` -> :mod:`hbt.data` ->
:mod:`hbt.sampler` -> model/loss -> engine -> evaluation -> report.
"""

__version__ = "0.1.0"
