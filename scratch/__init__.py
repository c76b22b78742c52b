"""nn-parity's from-scratch side: a NumPy-only multilayer perceptron with hand-derived backprop.

Nothing here imports torch.
"""

from . import gradcheck, weights  # modules of the public API: scratch.weights.save_npz
from .activations import ACTIVATIONS, Activation, get_activation, sigmoid
from .data import exam
from .gradcheck import loss_fn, network_gradient, numerical_gradient
from .losses import LOSSES, BCELoss, BCEWithLogitsLoss, Loss, get_loss
from .network import MLP, resolve_dtype
from .optim import SGD

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "SGD",
    "Activation",
    "BCELoss",
    "BCEWithLogitsLoss",
    "Loss",
    "exam",
    "get_activation",
    "get_loss",
    "gradcheck",
    "loss_fn",
    "network_gradient",
    "numerical_gradient",
    "resolve_dtype",
    "sigmoid",
    "weights",
]
