"""Training strategies of chapter 8, each usable on its own in any PyTorch loop: minibatch
samplers (§8.1.3), batch-size growth, gradient clipping (§8.2.4), Polyak averaging (§8.7.3),
early stopping (§7.8), curriculum learning (§8.7.6)."""

from deepdescent.training.averaging import PolyakAverage
from deepdescent.training.batch_size import GrowingBatchSampler
from deepdescent.training.clipping import Clipped, clip_grad_norm_, clip_grad_norm_per_tensor_, clip_grad_value_
from deepdescent.training.curriculum import Curriculum, StochasticCurriculum
from deepdescent.training.early_stopping import EarlyStopping
from deepdescent.training.sampling import Reshuffle, Sequential, ShuffleOnce, Stream, WithReplacement

__all__ = [
    "Clipped", "Curriculum", "EarlyStopping", "GrowingBatchSampler", "PolyakAverage", "Reshuffle", "Sequential",
    "ShuffleOnce", "StochasticCurriculum", "Stream", "WithReplacement", "clip_grad_norm_",
    "clip_grad_norm_per_tensor_", "clip_grad_value_",
]
