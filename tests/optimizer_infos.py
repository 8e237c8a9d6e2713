"""Every deepdescent optimizer in one list, with the configurations the generic contract tests
(test_optim_contract.py, after PyTorch's test/test_optim.py + common_optimizers.py) run it in, the
invalid inputs its constructor must refuse, and its documented deviations from torch.optim."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepdescent import optim
from deepdescent.algorithms import REGISTRY
from deepdescent.algorithms import validation as check


@dataclass(frozen=True)
class OptimizerInfo:
    cls: type
    configs: list[dict[str, Any]]
    errors: list[tuple[dict[str, Any], str]]  # (kwargs, the argument the error message must name)
    second_order: bool = False  # steps take a closure returning the loss (differentiated inside)
    # torch.optim tests that do not apply, with the reason (docs/guides/differences.md lists each deviation)
    deviations: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls.__name__


#: The deviations every optimizer shares (docs/guides/differences.md).
COMMON = {
    "maximize": "no maximize=True option: minimize the negated loss",
    "differentiable": "no differentiable=True option (no optimizer step inside an autograd graph)",
    "sparse": "dense gradients only: a sparse gradient raises (use torch.optim.SparseAdam)",
    "foreach": "no foreach=/fused= arguments: impl='auto'|'fused'|'eager' chooses the path",
}
SECOND_ORDER = {
    **COMMON,
    "no_closure": "step(closure) is required, as for torch.optim.LBFGS",
    "per_group": "one solve over all parameters: hyperparameters (lr included) are the same in every group",
}

#: Configurations and refused inputs chosen by hand for the book's methods; any other registered
#: algorithm gets generated ones (:func:`_generated`), so a new algorithm needs no entry here.
_CHOSEN: dict[str, tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]] = {
    "SGD": ([
        dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.002, momentum=0.9),
        dict(lr=0.002, momentum=0.9, nesterov=True, weight_decay=0.1),
        dict(lr=0.002, momentum=0.9, nesterov=True, convention="torch"),
        dict(lr=0.002, momentum=0.9, convention="torch", weight_decay=0.1),
    ], [(dict(lr=-0.1), "lr"), (dict(lr=0.1, momentum=-0.5), "momentum"), (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay"), (dict(lr=0.1, nesterov=True), "nesterov"),
        (dict(lr=0.1, convention="keras"), "convention"), (dict(lr=float("nan")), "lr"), (dict(), "lr")]),
    "AdaGrad": ([dict(lr=0.1), dict(lr=0.1, weight_decay=0.1), dict(lr=0.1, eps=1e-3)],
                [(dict(lr=-1.0), "lr"), (dict(eps=-1.0), "eps"), (dict(weight_decay=-0.1), "weight_decay")]),
    "RMSProp": ([
        dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.002, momentum=0.9),
        dict(lr=0.002, momentum=0.9, nesterov=True, weight_decay=0.1), dict(lr=0.01, rho=0.5, eps=1e-3),
        dict(lr=0.01, momentum=0.9, convention="torch"),
    ], [(dict(lr=-1.0), "lr"), (dict(rho=1.0), "rho"), (dict(eps=-1.0), "eps"), (dict(momentum=1.5), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay")]),
    "Adam": ([dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, betas=(0.5, 0.9)), dict(lr=0.01, eps=1e-3),
              dict(lr=0.01, amsgrad=True, weight_decay=0.1)],
             [(dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=(0.9, -0.1)), "betas"),
              (dict(eps=-1.0), "eps"), (dict(weight_decay=-1.0), "weight_decay"), (dict(amsgrad=1), "amsgrad")]),
    "AdaDelta": ([dict(), dict(lr=0.5, weight_decay=0.1), dict(rho=0.5, eps=1e-3)],
                 [(dict(lr=-1.0), "lr"), (dict(rho=1.0), "rho"), (dict(eps=-1.0), "eps"),
                  (dict(weight_decay=-1.0), "weight_decay")]),
    "DeltaBarDelta": ([dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, kappa=0.01, phi=0.5, theta=0.3)],
                      [(dict(lr=-1.0), "lr"), (dict(kappa=-1.0), "kappa"), (dict(phi=1.0), "phi"),
                       (dict(theta=1.0), "theta"), (dict(weight_decay=-1.0), "weight_decay")]),
}
#: Deviations of single optimizers, besides COMMON.
_DEVIATES = {
    "SGD": {"dampening": "no dampening option (the book's momentum, Alg. 8.2)"},
    "AdaGrad": {"lr_decay": "no lr_decay/initial_accumulator_value (Alg. 8.4 as written)"},
    "RMSProp": {"centered": "no centered option (Alg. 8.5/8.6 as written)"},
    "DeltaBarDelta": {"fused": "per-element branches: the eager path only"},
}
#: A value each kind of check refuses (the spec names the check of every hyperparameter).
_INVALID = {check.non_negative: -1.0, check.positive: -1.0, check.unit_interval: 1.0, check.flag: 1,
            check.betas: (0.9, 1.0), check.convention: "keras"}


def _generated(spec: Any) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """The defaults at lr 0.01, each kernel structure, weight decay, other betas/eps; one invalid
    value per hyperparameter."""
    lr = {"lr": 0.01} if "lr" in spec.names else {}
    configs = [dict(lr), *({**lr, **o} for o in spec.structures if o)]
    configs += [{**lr, k: v} for k, v in (("weight_decay", 0.1), ("betas", (0.5, 0.9)), ("eps", 1e-3))
                if k in spec.names]
    errors = [({hp.name: _INVALID[hp.check]}, hp.name) for hp in spec.hyperparameters]
    return configs, errors


FIRST = [
    OptimizerInfo(optim.optimizer_class(spec), *(_CHOSEN.get(name) or _generated(spec)),
                  deviations={**COMMON, **_DEVIATES.get(name, {})})
    for name, spec in REGISTRY.items()
]
SECOND = [
    OptimizerInfo(optim.Newton, [dict(), dict(damping=1.0), dict(damping=0.1, line_search="armijo")],
                  [(dict(damping=-1.0), "damping"), (dict(line_search="exact"), "line_search"),
                   (dict(max_params=0), "max_params"), (dict(lr=-1.0), "lr")], True, SECOND_ORDER),
    OptimizerInfo(optim.HessianFree, [dict(curvature="hessian"), dict(curvature="hessian", damping=0.1, cg_max_iter=10)],
                  [(dict(damping=-1.0), "damping"), (dict(curvature="fisher"), "curvature"),
                   (dict(cg_max_iter=0), "cg_max_iter"), (dict(lr=-1.0), "lr")], True,
                  {**SECOND_ORDER, "gauss_newton": "curvature='gauss_newton' (the default) needs a closure returning "
                   "(loss, output): the generic tests run curvature='hessian'"}),
    OptimizerInfo(optim.ConjugateGradient, [dict(max_iter=3), dict(beta="fletcher_reeves", max_iter=3)],
                  [(dict(beta="hestenes"), "beta"), (dict(max_iter=0), "max_iter"), (dict(lr=-1.0), "lr")],
                  True, SECOND_ORDER),
    OptimizerInfo(optim.BFGS, [dict(max_iter=3), dict(max_iter=3, line_search="armijo")],
                  [(dict(line_search="exact"), "line_search"), (dict(max_iter=0), "max_iter"), (dict(lr=-1.0), "lr")],
                  True, SECOND_ORDER),
    OptimizerInfo(optim.LBFGS, [dict(max_iter=3), dict(history=2, max_iter=3)],
                  [(dict(history=0), "history"), (dict(max_iter=0), "max_iter"), (dict(lr=-1.0), "lr"),
                   (dict(tolerance_grad=float("nan")), "tolerance_grad")],
                  True, {**SECOND_ORDER, "history_size": "the memory is history= (torch: history_size=)"}),
]
#: Layer-wise preconditioned methods (beyond the book, §8.6 at scale): stepped after backward()
#: like the first-order ones. The contract's problem has no nn.Linear, so K-FAC runs it on its
#: documented first-order fallback (tests/test_kfac.py checks the preconditioned path itself).
LAYERWISE = {**COMMON, "foreach": "no foreach=/fused= arguments: the step is per-layer matrix algebra"}
PRECONDITIONED = [
    OptimizerInfo(optim.KFAC, [dict(lr=0.002), dict(lr=0.01, momentum=0.0, weight_decay=0.1),
                               dict(lr=0.002, kl_clip=0.0, inv_every=2, factor_every=2)],
                  [(dict(lr=-1.0), "lr"), (dict(damping=0.0), "damping"), (dict(momentum=1.0), "momentum"),
                   (dict(stat_decay=1.0), "stat_decay"), (dict(kl_clip=-1.0), "kl_clip"),
                   (dict(inv_every=0), "inv_every"), (dict(factor_every=1.5), "factor_every"),
                   (dict(weight_decay=-1.0), "weight_decay"), (dict(nonfinite="ignore"), "nonfinite")],
                  deviations=LAYERWISE),
    OptimizerInfo(optim.Shampoo, [dict(lr=0.01), dict(lr=0.01, graft="sgd", weight_decay=0.1, momentum=0.0),
                                  dict(lr=0.01, graft="none", beta2=1.0, update_freq=2, block_size=3)],
                  [(dict(lr=-1.0), "lr"), (dict(momentum=1.0), "momentum"), (dict(beta2=0.0), "beta2"),
                   (dict(beta2=1.5), "beta2"), (dict(eps=0.0), "eps"), (dict(graft="adagrad"), "graft"),
                   (dict(graft_eps=-1.0), "graft_eps"), (dict(update_freq=0), "update_freq"),
                   (dict(block_size=0), "block_size"), (dict(weight_decay=-1.0), "weight_decay")],
                  deviations=LAYERWISE),
]
ALL = FIRST + SECOND + PRECONDITIONED
