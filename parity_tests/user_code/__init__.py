"""Hand-written NumPy networks in the three styles users bring, with their bug catalogues.

Each module is written as its style is written in tutorials and courses, in that style's own
names, importing NumPy only (never nn_parity): they are what the user-code adapter is tested on.

    dict_style      parameter dict, weights (in, out), `loss_and_grads` + `sgd_step`
    class_style     `class NeuralNetwork`, biases (1, H), fused `backward(X, y, lr)`
    nielsen_style   `class Network`, lists of (out, in) weights and (out, 1) biases, per sample

and, with a cost other than torch's plain loss, declared as a convention (docs/conventions.md):

    nielsen_quadratic   network.py: sigmoid output on 1/2 ||a - y||^2    get_loss("mse", scale=0.5)
    network2_l2         network2.py: L2 on the weights in the update  get_loss("bce", l2=, l2_n=)
    clipped_bce         a book's layer objects, np.clip(p, 1e-7, ...)  get_loss("bce", clip=1e-7)
    dropout_style       a dict network drawing its own dropout masks  dropout={"a1": "mask1"}

Each module's `BUGS` maps a name to `(factory, where, kind, description)`: `factory` builds the
buggy program exactly as the correct one is built, `where` is the user's name of the parameter or
quantity where the bug first shows, `kind` one of forward/loss/grad/param. "First" is in the
lockstep's order within a step: forward quantities layer by layer, the loss, the gradients from
the last layer back (weight before bias), then the updated parameters in the same order. For a
fused step the gradient is the one the update implies, (before - after) / lr. `EQUIVALENTS` maps
a name to `(factory, description)`: rewritings that compute the same numbers and must pass.
(`dropout_style`'s `BUGS` give, in the factory's place, the functions a bug replaces, by role.)
"""
