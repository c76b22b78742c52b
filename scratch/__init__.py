"""nn-parity's from-scratch side: a NumPy-only multilayer perceptron with hand-derived backprop.

Nothing here imports torch.
"""

from . import gradcheck, optim, weights
from .activations import ACTIVATIONS, Activation, get_activation, sigmoid
from .data import exam
from .gradcheck import loss_fn, network_gradient, numerical_gradient
from .losses import (
    LOSSES,
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Loss,
    MSELoss,
    NLLLoss,
    get_loss,
)
from .network import MLP, resolve_dtype
from .optim import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, RMSprop, get_optimizer

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "OPTIMIZERS",
    "SGD",
    "Activation",
    "Adagrad",
    "Adam",
    "AdamW",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "Loss",
    "MSELoss",
    "NLLLoss",
    "RMSprop",
    "exam",
    "get_activation",
    "get_loss",
    "get_optimizer",
    "gradcheck",
    "loss_fn",
    "network_gradient",
    "numerical_gradient",
    "optim",
    "resolve_dtype",
    "sigmoid",
    "weights",
]
