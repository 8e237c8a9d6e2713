"""Curvature: gradients, Hessian-vector and Gauss–Newton-vector products, shared by the
second-order optimizers and the diagnostics.

* :mod:`.autograd` works on the graph of a loss a closure returned (reverse-over-reverse), for
  optimizers that take closures;
* :class:`ModelObjective` is a functional oracle on ``torch.func`` (forward-over-reverse), for any
  ``nn.Module`` and loss function, with an explicit choice of train/eval semantics.
"""

from deepdescent.curvature.autograd import ClosureEvaluation, evaluate_closure, gnvp, hvp
from deepdescent.curvature.objective import ModelObjective
from deepdescent.curvature.vectors import flat, unflat_like

__all__ = ["ClosureEvaluation", "ModelObjective", "evaluate_closure", "flat", "gnvp", "hvp", "unflat_like"]
