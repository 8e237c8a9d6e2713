"""deepdescent: the optimization of deep models, after chapter 8 of *Deep Learning*
(Goodfellow, Bengio, Courville).

Subpackages: :mod:`deepdescent.algorithms` (the functional core: one module per algorithm box),
:mod:`deepdescent.optim` (``torch.optim`` optimizers), :mod:`deepdescent.schedules`,
:mod:`deepdescent.init` (§8.4), :mod:`deepdescent.training` (samplers, clipping, averaging, early
stopping, curriculum).
"""

from deepdescent import algorithms, init, optim, schedules, training

__version__ = "0.1.0"
__all__ = ["__version__", "algorithms", "init", "optim", "schedules", "training"]
