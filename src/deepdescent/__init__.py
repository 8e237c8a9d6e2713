"""deepdescent: the optimization of deep models, after chapter 8 of *Deep Learning*
(Goodfellow, Bengio, Courville).

Subpackages: :mod:`deepdescent.algorithms` (the functional core: one module per algorithm box),
:mod:`deepdescent.optim` (``torch.optim`` optimizers), :mod:`deepdescent.schedules`.
"""

from deepdescent import algorithms, optim, schedules

__version__ = "0.1.0"
__all__ = ["__version__", "algorithms", "optim", "schedules"]
