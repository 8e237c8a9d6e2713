"""Parameter initialization (§8.4): schemes for any weight tensor, biases, data-driven scale,
transfer from another model, and :func:`apply` for whole models."""

from deepdescent.init.apply import WEIGHT_SCHEMES, InitReport, apply
from deepdescent.init.bias import (
    class_marginals,
    lstm_forget_bias_,
    reconstruction_marginals_,
    relu_bias_,
    softmax_marginals_,
    variance_,
)
from deepdescent.init.data_driven import LayerScaling, scale_by_data
from deepdescent.init.fans import fans
from deepdescent.init.schemes import gain, normalized_, orthogonal_, random_walk_, random_walk_gain, sparse_, uniform_
from deepdescent.init.transfer import TransferReport, from_model

__all__ = [
    "WEIGHT_SCHEMES", "InitReport", "LayerScaling", "TransferReport", "apply", "class_marginals", "fans",
    "from_model", "gain", "lstm_forget_bias_", "normalized_", "orthogonal_", "random_walk_", "random_walk_gain",
    "reconstruction_marginals_", "relu_bias_", "scale_by_data", "softmax_marginals_", "sparse_", "uniform_",
    "variance_",
]
