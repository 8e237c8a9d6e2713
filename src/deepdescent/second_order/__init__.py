"""Second-order methods of §8.6: Newton (8.8, 8.28), Hessian-free, nonlinear conjugate gradients
(8.9), BFGS and L-BFGS, with shared line searches. All take closures and any number of param
groups; they are also importable from :mod:`deepdescent.optim`."""

from deepdescent.second_order.base import LineSearchWarning, SecondOrderOptimizer
from deepdescent.second_order.bfgs import BFGS, LBFGS, CurvatureSkipWarning
from deepdescent.second_order.conjugate_gradient import ConjugateGradient
from deepdescent.second_order.hessian_free import HessianFree
from deepdescent.second_order.line_search import LineSearchError, LineSearchResult
from deepdescent.second_order.newton import Newton

__all__ = ["BFGS", "LBFGS", "ConjugateGradient", "CurvatureSkipWarning", "HessianFree", "LineSearchError",
           "LineSearchResult", "LineSearchWarning", "Newton", "SecondOrderOptimizer"]
