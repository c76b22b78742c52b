"""nn-parity's from-scratch side: a NumPy-only multilayer perceptron with hand-derived backprop.

Nothing here imports torch.
"""

from . import gradcheck
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
from . import optim
from .optim import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, RMSprop, get_optimizer

__all__ = [
    "OPTIMIZERS",
    "Adagrad",
    "Adam",
    "AdamW",
    "RMSprop",
    "get_optimizer",
    "optim",
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "SGD",
    "Activation",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "Loss",
    "MSELoss",
    "NLLLoss",
    "exam",
    "get_activation",
    "get_loss",
    "gradcheck",
    "loss_fn",
    "network_gradient",
    "numerical_gradient",
    "resolve_dtype",
    "sigmoid",
]
