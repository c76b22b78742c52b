"""The user-code catalogue's causes: each planted bug with the cause it must get, measured with
the network and op catalogues' (`mutation/cause_score.py`).

    python -m parity_tests.user_causes     # the whole table: network, op and user code
"""

from __future__ import annotations

from nn_parity.torch_ref.mutation.cause_score import CauseTable, cause_row

# The cause each user-style bug must get (None: no fingerprint is known to fit it).
STYLE_CAUSES: dict[str, str | None] = {
    "dict-db1-mean-not-sum": "reduction",
    "dict-averaged-twice": "reduction",
    "dict-tanh-prime-of-z-as-if-a": "derivative-at-z",
    "dict-tanh-prime-twice": "derivative-form",
    "dict-tanh-in-place-aliases-z1": None,
    "dict-loss-with-flat-labels": None,
    "dict-sgd-weights-only": "no-update",
    "class-updates-W2-before-using-it": "stale-weights",
    "class-db2-not-averaged": "reduction",
    "class-db1-summed-over-everything": "wrong-axis",
    "class-mse-delta-with-cross-entropy": "derivative-form",
    "class-sigmoid-derivative-of-z": "derivative-at-z",
    "class-learning-rate-over-m": "reduction",
    "class-derivative-overwrites-a1": None,
    "class-loss-without-negative-class": None,
    "nielsen-nabla-assigned-not-summed": "sample-dropped",
    "nielsen-last-sample-dropped": "sample-dropped",
    "nielsen-nabla-buffers-kept": "carried-state",
    "nielsen-averaged-twice": "reduction",
    "nielsen-quadratic-delta-with-cross-entropy": "derivative-form",
    "nielsen-sigmoid-prime-of-activation": "derivative-form",
    "nielsen-hidden-nabla-w-transposed": "layout",
    "nielsen-total-cost-overwritten": None,
}


def style_rows() -> list[dict]:
    from .test_user_styles import STYLES, run

    rows = []
    for style, (module, *_) in STYLES.items():
        for name, (factory, *_) in module.BUGS.items():
            div = run(style, factory, 5).first_divergence
            key = f"{style}-{name}"
            rows.append(cause_row("user", key, STYLE_CAUSES.get(key), div and div.diagnosis))
    return rows


def optimizer_rows() -> list[dict]:
    from .test_user_optimizer_state import run
    from .user_code.own_optimizers import BUGS

    rows = []
    for name, (cls, which, _, cause, _) in BUGS.items():
        div = run(cls, which).first_divergence
        rows.append(cause_row("user-opt", name, cause, div and div.diagnosis))
    return rows


def derivative_rows() -> list[dict]:
    from .test_user_styles import run
    from .user_code.derivative_bugs import BUGS

    rows = []
    for name, (factory, _, _, cause, _) in BUGS.items():
        div = run("dict", factory, 5).first_divergence
        rows.append(cause_row("user", f"dict-{name}", cause, div and div.diagnosis))
    return rows


def user_rows() -> list[dict]:
    return style_rows() + derivative_rows() + optimizer_rows()


if __name__ == "__main__":
    from nn_parity.torch_ref.mutation.cause_score import causes

    table: CauseTable = causes(extra=user_rows())
    print(table.table())
