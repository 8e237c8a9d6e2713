"""The functional core: one module per algorithm box of chapter 8.

Each module holds pure-Python functions over *lists* of tensors, written with multi-tensor
(``torch._foreach_*``) operations and no data-dependent control flow:

* ``init(params) -> state``: the algorithm's state, zero-initialised as the box says;
* ``update(params, grads, state, *, <hyperparameters>) -> None``: one step of the box, which
  updates ``params`` and ``state`` **in place** (an optimizer step is memory-bound; copying the
  state would double its cost). ``grads`` are never modified.

These functions are the one place where each formula is written. ``deepdescent.optim`` wraps
them in ``torch.optim.Optimizer`` subclasses; faster execution paths call the same functions.
"""

from deepdescent.algorithms import adadelta, adagrad, adam, delta_bar_delta, momentum, rmsprop, sgd

__all__ = ["adadelta", "adagrad", "adam", "delta_bar_delta", "momentum", "rmsprop", "sgd"]
