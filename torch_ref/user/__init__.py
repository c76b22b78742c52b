"""User code: a hand-written NumPy network adapted as a lockstep side, in its own names and
layout.

    adapt.py    `adapt`: the user's network in a few lines
    network.py  the user's parameters and functions, called with messages that name them
    access.py   reading and writing the user's arrays where they live
    layout.py   how each parameter is stored: a map worked out from shapes, names or a probe
"""

from nn_parity.torch_ref.user.adapt import adapt
from nn_parity.torch_ref.user.network import UserCodeError, UserNetwork

__all__ = ["UserCodeError", "UserNetwork", "adapt"]
