"""The reports package: figures, report.html and the terminal summary, from synthetic records."""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from nn_parity import reports
from nn_parity.reports import load_record, render, summary_text
from nn_parity.reports.figures import probs_figure, save
from nn_parity.reports.html import page as html_page

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALWAYS = ["loss.png", "errors.png", "probs.png", "gradient_descent.png"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Reasons with characters HTML must escape, so the page is checked for escaping them.
REASONS = {
    "z": "x W^T + b: BLAS sums in a different order & torch adds b inside addmm",
    "a": "f(z) on z that already differs <a few ulps>",
    "prob": "the output activation, as for a",
    "loss": "a mean of N logs: summation order differs",
    "grad": "dz^T x sums over the batch; |g| << 1 keeps an absolute error",
    "param": "theta - lr * g: torch fuses the multiply-add",
}
ULPS = {
    "z": (2**12, 2**10),
    "a": (2**12, 2**10),
    "prob": (2**12, 2**8),
    "loss": (2**12, 2**8),
    "grad": (2**12, 2**10),
    "param": (2**12, 2**8),
}


def _items(sizes: list[int]) -> list[tuple[str, str, int | None]]:
    """(label, quantity, layer) in the engine's order."""
    L = len(sizes) - 1
    items: list[tuple[str, str, int | None]] = []
    for l in range(L):
        items.append((f"z[{l}]", "z", l))
        if l < L - 1:
            items.append((f"a[{l}]", "a", l))
    items += [("prob", "prob", L - 1), ("loss", "loss", None)]
    for q in ("grad", "param"):
        for l in range(L - 1, -1, -1):
            for p in ("weight", "bias"):
                items.append((f"{q} layers.{l}.{p}", q, l))
    return items


def write_record(
    run_dir: Path,
    *,
    steps: int = 50,
    sizes: tuple[int, ...] = (2, 8, 1),
    diverge_at: int | None = None,
    exact: bool = False,
    nonfinite: bool = False,
    dtype: str = "float64",
    kink_steps: tuple[int, ...] = (),
    diagnosis: object = None,
    samples: int = 60,
    seed: int = 0,
) -> Path:
    """A run record per docs/record.md: summary.json, metrics.csv and record.npz.

    Two-feature data gets X and the decision-boundary arrays; other data does not.
    diverge_at makes `grad layers.0.weight` fail from that step on (fd agrees with torch),
    exact makes every error exactly zero, nonfinite puts NaN and inf into the errors and loss.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    sizes_l = list(sizes)
    items = _items(sizes_l)
    tolerances: dict[str, dict[str, Any]] = {
        q: {"rtol": r * eps, "atol": a * eps, "reason": REASONS[q]} for q, (r, a) in ULPS.items()
    }
    step = np.arange(steps)

    loss_s = 0.7 * np.exp(-step / 20) + 0.1
    loss_t = loss_s if exact else loss_s + rng.choice([-1.0, 0.0, 1.0], steps) * eps * 0.25
    columns: dict[str, np.ndarray] = {"step": step, "loss_scratch": loss_s, "loss_torch": loss_t}
    quantities = {}
    for label, q, layer in items:
        rel = np.zeros(steps) if exact else eps * rng.lognormal(0.0, 1.0, steps)
        if exact:
            rel[: steps // 2] = 0.0
        if diverge_at is not None and label == "grad layers.0.weight":
            rel[diverge_at:] = 1e-3 * (1 + np.arange(steps - diverge_at))
        if nonfinite and label in ("grad layers.0.weight", "z[0]"):
            rel[steps // 2 :: 3] = np.nan
            rel[steps // 2 + 1 :: 3] = np.inf
        max_abs = rel * 0.5
        columns[f"{label}:max_abs"] = max_abs
        columns[f"{label}:rel_err"] = rel
        failing = np.flatnonzero(~(rel <= tolerances[q]["rtol"]))
        quantities[label] = {
            "quantity": q,
            "layer": layer,
            "max_abs": float(np.max(max_abs)),
            "max_rel": float(np.max(rel)),
            "passed": failing.size == 0,
            "max_abs_eps": float(np.max(max_abs)) / eps,
            "first_failing_step": int(failing[0]) if failing.size else None,
        }
    if nonfinite:
        columns["loss_scratch"] = columns["loss_scratch"].copy()
        columns["loss_scratch"][-3:] = [np.nan, np.inf, np.nan]
    passed = all(v["passed"] for v in quantities.values())

    divergence = None
    if diverge_at is not None:
        divergence = {
            "step": diverge_at,
            "quantity": "grad",
            "layer": 0,
            "param": "weight",
            "label": "grad layers.0.weight",
            "index": [1, 0],
            "scratch": 0.123456789012345,
            "torch": 0.124456789012345,
            "abs_err": 0.001,
            "rel_err": 0.00803,
            "rtol": tolerances["grad"]["rtol"],
            "atol": tolerances["grad"]["atol"],
            "mismatches": 3,
            "total": 16,
            "fd": 0.12445678901,
            "fd_agrees_with": "torch",
        }
    elif nonfinite:
        first = next(i for i in items if i[0] == "z[0]")
        divergence = {
            "step": steps // 2,
            "quantity": "z",
            "layer": 0,
            "param": None,
            "label": first[0],
            "index": [3, 1],
            "scratch": float("nan"),
            "torch": 0.5,
            "abs_err": float("nan"),
            "rel_err": float("nan"),
            "rtol": tolerances["z"]["rtol"],
            "atol": tolerances["z"]["atol"],
            "mismatches": 1,
            "total": samples * sizes[1],
            "fd": None,
            "fd_agrees_with": None,
        }

    w0, g = 0.31, 0.42
    summary = {
        "passed": passed,
        "steps": steps,
        "steps_requested": steps,
        "dtype": dtype,
        "architecture": {
            "sizes": sizes_l,
            "activations": ["tanh"] * (len(sizes_l) - 2) + ["sigmoid"],
            "bias": True,
            "init": "xavier_uniform",
            "parameters": sum((a + 1) * b for a, b in itertools.pairwise(sizes_l)),
        },
        "data": {
            "name": "moons" if sizes[0] == 2 else "blobs",
            "samples": samples,
            "features": sizes[0],
            "source": "synthetic, seeded",
        },
        "loss": "bce",
        "reduction": "mean",
        "lr": 0.5,
        "seed": seed,
        "tolerances": tolerances,
        "quantities": quantities,
        "first_divergence": divergence,
        "diagnosis": None,
        "kink_steps": list(kink_steps),
        "loss_first": {"scratch": float(loss_s[0]), "torch": float(loss_t[0])},
        "loss_last": {"scratch": float(loss_s[-1]), "torch": float(loss_t[-1])},
        "gradient_slice": {
            "param": "layers.0.weight",
            "index": [1, 0],
            "value": w0,
            "loss": 0.8,
            "grad_scratch": g,
            "grad_torch": g,
            "grad_fd": g + 1e-11,
        },
        "versions": {
            "python": "3.12.1",
            "numpy": np.__version__,
            "torch": "2.5.1",
            "nn_parity": "0.1.0",
        },
        "created": "2026-11-28T16:40:20+00:00",
    }
    if diagnosis is not None:
        summary["diagnosis"] = diagnosis
        if divergence is not None:
            divergence["diagnosis"] = diagnosis
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    table = np.column_stack(list(columns.values()))
    with (run_dir / "metrics.csv").open("w") as f:
        f.write(",".join(columns) + "\n")
        np.savetxt(f, table, delimiter=",", fmt="%.17g")

    y = (rng.random(samples) < 0.5).astype(np.float64)
    p_first = 0.5 + 0.05 * rng.standard_normal(samples)
    p_last = np.clip(np.where(y == 1, 0.85, 0.15) + 0.1 * rng.standard_normal(samples), 0, 1)
    sw = np.linspace(w0 - 2, w0 + 2, 81)
    arrays: dict[str, Any] = {
        "y": y,
        "probs_first_scratch": p_first,
        "probs_first_torch": p_first if exact else p_first + 1e-16,
        "probs_last_scratch": p_last,
        "probs_last_torch": p_last if exact else p_last * (1 + 1e-15),
        "slice_w": sw,
        "slice_loss": 0.8 + g * (sw - w0) + 0.3 * (sw - w0) ** 2,
    }
    if sizes[0] == 2:
        X = rng.standard_normal((samples, 2))
        gx = np.linspace(-3, 3, 40)
        gy = np.linspace(-2.5, 2.5, 30)
        xx, yy = np.meshgrid(gx, gy)  # (G_y, G_x): row i at grid_y[i]
        arrays |= {
            "X": X,
            "grid_x": gx,
            "grid_y": gy,
            "boundary_before_scratch": 1 / (1 + np.exp(-0.1 * (xx + yy) - 0.02)),
            "boundary_before_torch": 1 / (1 + np.exp(-0.1 * (xx + yy) - 0.02)),
            "boundary_after_scratch": 1 / (1 + np.exp(-3 * (xx - 0.5 * yy**2))),
            "boundary_after_torch": 1 / (1 + np.exp(-3 * (xx - 0.5 * yy**2))),
        }
    np.savez(run_dir / "record.npz", **arrays)
    return run_dir


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), (path, img.shape)
    h, w = img.shape[:2]
    assert 300 <= h <= 3000 and 400 <= w <= 3000, (path, img.shape)
    assert img.std() > 0.01, f"{path.name} is blank"


# --------------------------------------------------------------------------------------------
# render

# A render draws five figures (about a second of matplotlib); the tests below that only read
# what was rendered share one render per record, built once per module. `make test` keeps a
# module on one xdist worker (--dist loadfile), so each is built once there too.


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """`rendered(name, **record)` -> (run folder, paths render() wrote), rendered once."""
    cache: dict[str, tuple[Path, list[Path]]] = {}

    def get(name: str, **record) -> tuple[Path, list[Path]]:
        if name not in cache:
            run = write_record(tmp_path_factory.mktemp(name) / "run", **record)
            if name == "no-grid":  # left over from other data, to be removed
                (run / "boundary.png").write_bytes(PNG_SIGNATURE)
            cache[name] = run, render(run)
        return cache[name]

    return get


@pytest.fixture
def passing(rendered):
    return rendered("passing")


@pytest.fixture
def diverged(rendered):
    return rendered("diverged", diverge_at=7)


@pytest.fixture
def no_grid(rendered):
    return rendered("no-grid", sizes=(5, 4, 3, 1))


def test_render_writes_every_figure_and_the_page(passing):
    run, written = passing
    expected = [*ALWAYS, "boundary.png", "report.html"]
    assert sorted(p.name for p in written) == sorted(expected)
    assert written[-1].name == "report.html"
    for p in written:
        assert p.parent == run and p.is_file() and p.stat().st_size > 1000, p


def test_every_png_is_a_valid_image(diverged):
    pngs = [p for p in diverged[1] if p.suffix == ".png"]
    assert len(pngs) == 5
    for p in pngs:
        _assert_png(p)


def test_no_boundary_figure_without_a_grid(no_grid):
    run, written = no_grid
    assert {p.name for p in written} == {*ALWAYS, "report.html"}
    assert not (run / "boundary.png").exists()
    assert "boundary.png" not in (run / "report.html").read_text()


def test_a_stale_boundary_figure_is_removed(no_grid):
    run, _ = no_grid  # a boundary.png was there before the render
    assert not (run / "boundary.png").exists()


def test_rendering_is_deterministic(diverged, tmp_path):
    again = write_record(tmp_path / "run", diverge_at=7)
    first = {p.name: p.read_bytes() for p in diverged[1]}
    second = {p.name: p.read_bytes() for p in render(again)}
    assert first == second


def test_exact_agreement_renders_without_warnings(tmp_path):
    # Zeros on log axes: pytest turns any warning into an error.
    run = write_record(tmp_path / "run", exact=True)
    written = render(run)
    assert len(written) == 6
    for p in written[:-1]:
        _assert_png(p)


def test_nan_and_inf_in_the_record_render_without_warnings(tmp_path):
    run = write_record(tmp_path / "run", nonfinite=True)
    written = render(run)
    assert {p.name for p in written} == {*ALWAYS, "boundary.png", "report.html"}
    page = (run / "report.html").read_text()
    assert "DIVERGED" in page and "nan" in page


def test_float32_single_step_record_renders(tmp_path):
    run = write_record(tmp_path / "run", steps=1, dtype="float32", sizes=(3, 1))
    written = render(run)
    assert len(written) == 5
    for p in written[:-1]:
        _assert_png(p)


def test_a_20000_step_record_renders_with_thinned_lines(tmp_path, monkeypatch):
    # What keeps a long record quick to draw: no line carries more than MAX_LINE_POINTS
    # points (each bin's min and max, so spikes survive), whatever the number of steps.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from nn_parity.reports.figures import MAX_LINE_POINTS

    longest: dict[str, int] = {}
    savefig = Figure.savefig

    def measuring(fig, path, *args, **kwargs):
        lines = fig.findobj(Line2D)
        longest[Path(path).name] = max((len(line.get_xdata()) for line in lines), default=0)
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", measuring)
    run = write_record(tmp_path / "run", steps=20_000, diverge_at=15_000)
    written = render(run)
    assert len(written) == 6
    assert longest["loss.png"] > MAX_LINE_POINTS // 2, longest  # the lines were measured
    assert max(longest.values()) <= MAX_LINE_POINTS, longest
    _assert_png(run / "errors.png")


# --------------------------------------------------------------------------------------------
# load_record


def test_load_record_reads_all_three_files(tmp_path):
    run = write_record(tmp_path / "run", steps=12)
    rec = load_record(str(run))
    assert isinstance(rec, reports.Record)
    assert rec.summary["steps"] == 12
    assert rec.metrics["step"].dtype.kind == "i"
    np.testing.assert_array_equal(rec.metrics["step"], np.arange(12))
    for label in rec.summary["quantities"]:
        assert rec.metrics[f"{label}:rel_err"].shape == (12,)
        assert rec.metrics[f"{label}:max_abs"].shape == (12,)
    assert rec.arrays["boundary_after_torch"].shape == (30, 40)
    assert rec.arrays["y"].shape == (60,)


def test_load_record_reads_empty_cells_as_nan(tmp_path):
    run = write_record(tmp_path / "run", steps=3)
    lines = (run / "metrics.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[1] = ""
    lines[2] = ",".join(cells)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    rec = load_record(run)
    assert np.isnan(rec.metrics["loss_scratch"][1])
    assert np.isfinite(rec.metrics["loss_scratch"][[0, 2]]).all()


def test_a_record_without_steps_draws_only_what_it_can(tmp_path):
    # e.g. a run that failed before its first step was recorded
    run = write_record(tmp_path / "run")
    header = (run / "metrics.csv").read_text().splitlines()[0]
    (run / "metrics.csv").write_text(header + "\n")
    rec = load_record(run)
    assert rec.metrics["loss_torch"].shape == (0,)
    names = {p.name for p in render(run)}
    assert names == {"probs.png", "gradient_descent.png", "boundary.png", "report.html"}


def test_probabilities_of_only_the_first_step_still_draw(tmp_path):
    run = write_record(tmp_path / "run")
    with np.load(run / "record.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("probs_last")}
    np.savez(run / "record.npz", **arrays)
    save(probs_figure(load_record(run)), run / "probs.png")  # the one figure this looks at
    img = imread(run / "probs.png")
    assert img.shape[1] < img.shape[0] * 1.5  # one square panel, not two side by side
    _assert_png(run / "probs.png")


# --------------------------------------------------------------------------------------------
# report.html


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_html_is_complete_and_self_contained(passing):
    run, written = passing
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "PASS" in page and "DIVERGED" not in page
    summary = json.loads((run / "summary.json").read_text())
    for label in summary["quantities"]:
        assert f"<code>{html.escape(label)}</code>" in page, label
    for reason in REASONS.values():
        assert html.escape(reason) in page, reason
    assert "<a few ulps>" not in page  # escaped, not markup
    assert "2026-11-28T16:40:20+00:00" in page and "2.5.1" in page
    sources = _img_sources(page)
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(sources) == len(pngs) == 5
    for src, png in zip(sources, pngs):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]) == png.read_bytes()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|script)\b", page)


def test_report_html_shows_the_first_divergence(diverged):
    run, _ = diverged
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "DIVERGED" in page and "PASS" not in page.replace("passed", "")
    assert "First divergence" in page
    for text in (
        "grad layers.0.weight",
        "[1, 0]",
        "0.123456789012345",
        "0.124456789012345",
        "3 of 16",
        "finite differences agree with torch: the scratch gradient is wrong",
    ):
        assert html.escape(text) in page, text
    # the failing item's row is marked, with its first failing step
    assert re.search(r'<tr class="failed"><td><code>grad layers\.0\.weight</code>.*?>7</td>', page)


@pytest.mark.parametrize(
    ("diagnosis", "shown"),
    [
        (
            "the relu' at 0 differs: scratch uses 1, torch uses 0 <sic>",
            ["scratch uses 1, torch uses 0 <sic>"],
        ),
        (
            {"cause": "derivative-at-z", "explanation": "f'(z) is taken at a, not z"},
            ["Likely cause: derivative-at-z", "f'(z) is taken at a, not z"],
        ),
    ],
)
def test_report_html_shows_a_diagnosis(tmp_path, diagnosis, shown):
    # the page alone: its figures are the same with or without a diagnosis
    run = write_record(tmp_path / "run", diverge_at=7, diagnosis=diagnosis)
    page = html_page(load_record(run), [])
    assert "<h2>Diagnosis</h2>" in page
    for text in shown:
        assert html.escape(text) in page, text


def test_report_html_has_no_diagnosis_section_without_one(diverged):
    run, _ = diverged
    assert "<h2>Diagnosis</h2>" not in (run / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# summary_text


def _summary(tmp_path, **kw) -> dict:
    return load_record(write_record(tmp_path / "run", **kw)).summary


def test_summary_text_of_a_passing_run(tmp_path):
    text = summary_text(_summary(tmp_path))
    lines = text.splitlines()
    assert lines[0].startswith("PASS")
    assert "DIVERGED" not in text and "First divergence" not in text
    assert "moons" in text and "2-8-1" in text and "float64" in text and "bce" in text
    assert "lr 0.5" in text and "50 steps" in text
    for q in ("z", "a", "prob", "loss", "grad", "param"):
        assert re.search(rf"^\s+{q}\s+ok\s", text, re.MULTILINE), q
    assert len(lines) <= 25
    assert text.isascii() and not ANSI.search(text)


def test_summary_text_of_a_diverged_run(tmp_path):
    text = summary_text(_summary(tmp_path, diverge_at=7))
    lines = text.splitlines()
    assert lines[0].startswith("DIVERGED") and "PASS" not in text
    assert "step 7" in text
    assert "grad layers.0.weight" in text and "layer 0" in text and "param weight" in text
    assert "[1, 0]" in text
    assert "0.123456789012345" in text and "0.124456789012345" in text
    assert "3 of 16" in text and "rtol 9.09e-13" in text
    assert "finite differences agree with torch: the scratch gradient is wrong" in text
    assert re.search(r"^\s+grad\s+FAIL\s", text, re.MULTILINE)
    assert re.search(r"^\s+param\s+ok\s", text, re.MULTILINE)
    assert len(lines) <= 25 and text.isascii()


def test_summary_text_colors_only_the_verdict(tmp_path):
    passing = summary_text(_summary(tmp_path / "a"), color=True)
    failing = summary_text(_summary(tmp_path / "b", diverge_at=7), color=True)
    assert passing.startswith("\x1b[32") and "\x1b[31" not in passing
    assert failing.startswith("\x1b[31") and "\x1b[32" not in failing
    assert len(ANSI.findall(passing)) == 2 and len(ANSI.findall(failing)) == 2
    assert ANSI.sub("", passing) == summary_text(_summary(tmp_path / "a"))


def test_summary_text_mentions_kinks(tmp_path):
    text = summary_text(_summary(tmp_path, kink_steps=(3, 9, 14)))
    assert "relu kinks crossed by rounding at 3 steps; resynchronised" in text
    assert "kink" not in summary_text(_summary(tmp_path / "b"))


@pytest.mark.parametrize(
    ("diagnosis", "shown"),
    [
        ("the bias gradient sums over the wrong axis", "sums over the wrong axis"),
        ({"suspect": "layers.0.weight", "evidence": [1, 2]}, "suspect: layers.0.weight"),
        (
            {"cause": "reduction", "explanation": "scratch's gradient is N = 60 times torch's"},
            "Diagnosis: likely cause: reduction\n  scratch's gradient is N = 60 times torch's",
        ),
        ("", None),
        ({}, None),
    ],
)
def test_summary_text_prints_a_diagnosis(tmp_path, diagnosis, shown):
    text = summary_text(_summary(tmp_path, diverge_at=7, diagnosis=diagnosis))
    if shown is None:
        assert "Diagnosis" not in text
    else:
        assert "Diagnosis" in text and shown in text


def test_summary_text_finds_the_diagnosis_inside_the_divergence(tmp_path):
    summary = _summary(tmp_path, diverge_at=7)
    summary["first_divergence"]["diagnosis"] = {"cause": "sign", "explanation": "a sign error"}
    assert summary["diagnosis"] is None
    text = summary_text(summary)
    assert "likely cause: sign" in text and "a sign error" in text


def test_summary_text_caps_a_long_diagnosis(tmp_path):
    long = "\n".join(f"finding {i}: " + "word " * 30 for i in range(20))
    text = summary_text(_summary(tmp_path, diverge_at=7, diagnosis=long))
    assert len(text.splitlines()) <= 30
    assert "report.html" in text


def test_summary_text_of_a_bare_summary():
    assert summary_text({}).startswith("DIVERGED")
    assert summary_text({"passed": True, "first_divergence": None}).startswith("PASS")


# --------------------------------------------------------------------------------------------
# isolation


def test_reports_never_imports_torch(tmp_path):
    run = write_record(tmp_path / "run")
    code = "\n".join(
        [
            "import sys",
            "from nn_parity import reports",
            "import nn_parity.reports.figures, nn_parity.reports.html, nn_parity.reports.text",
            f"reports.render({str(run)!r})",
            f"print(reports.summary_text(reports.load_record({str(run)!r}).summary))",
            "heavy = ('torch', 'nn_parity.scratch', 'nn_parity.torch_ref')",
            "bad = sorted(m for m in sys.modules if m.startswith(heavy))",
            "assert not bad, bad",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS")
    assert (run / "report.html").is_file()
