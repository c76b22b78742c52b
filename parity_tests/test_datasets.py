"""The data sets: the multi-class and regression sets bundled with scikit-learn, read without a
network, and CSV files with a multi-class or real-valued label column."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import sklearn
from nn_parity.torch_ref.frontends.datasets import DATASETS, load_csv, load_dataset


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a data set tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_the_no_network_guard_can_fail(no_network):
    """The control for the guard: a connection attempt under it is reported."""
    with pytest.raises(AssertionError, match="tried to open a network connection"):
        socket.create_connection(("198.51.100.1", 80), timeout=0.01)
    with (
        socket.socket() as sock,
        pytest.raises(AssertionError, match="tried to open a network connection"),
    ):
        sock.connect(("198.51.100.1", 80))


# name: (N, D, classes or None, counts per class)
SETS = {
    "iris": (150, 4, 3, [50, 50, 50]),
    "wine": (178, 13, 3, [59, 71, 48]),
    "digits": (1797, 64, 10, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
    "diabetes": (442, 10, None, None),
}


@pytest.mark.parametrize("name", list(SETS))
def test_bundled_set_shapes_dtypes_and_classes(name, no_network):
    n, d, n_classes, counts = SETS[name]
    ds = load_dataset(name)
    assert name in DATASETS
    assert ds.X.shape == (n, d) and ds.X.dtype == np.float64 and np.isfinite(ds.X).all()
    assert len(ds.feature_names) == d
    if n_classes is None:
        assert ds.task == "regression" and ds.y.dtype == np.float64 and ds.y.shape == (n,)
        assert ds.n_classes is None and ds.n_outputs == 1 and ds.classes is None
    else:
        assert ds.task == "multiclass" and ds.y.dtype == np.int64 and ds.y.shape == (n,)
        assert ds.n_classes == n_classes == ds.n_outputs == len(ds.classes)
        assert np.bincount(ds.y, minlength=n_classes).tolist() == counts


def test_bundled_sets_come_from_the_sklearn_package():
    """The files load_iris & co. read ship inside the installed package."""
    data = Path(sklearn.__file__).parent / "datasets" / "data"
    for f in ("iris.csv", "wine_data.csv", "digits.csv.gz", "diabetes_data_raw.csv.gz"):
        assert (data / f).is_file(), f


def test_digits_are_scaled_to_the_unit_interval():
    ds = load_dataset("digits")
    from sklearn.datasets import load_digits

    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert np.array_equal(ds.X * 16, load_digits().data)  # / 16 exactly, nothing else
    assert ds.classes == [str(k) for k in range(10)] and "pixels / 16" in ds.source


@pytest.mark.parametrize("name", ["iris", "wine", "diabetes"])
def test_standardised_sets(name):
    ds = load_dataset(name)
    np.testing.assert_allclose(ds.X.mean(axis=0), 0, atol=1e-14)
    np.testing.assert_allclose(ds.X.std(axis=0), 1, rtol=1e-14)
    if name == "diabetes":  # the target too: raw, it runs 25..346
        assert abs(ds.y.mean()) < 1e-14 and ds.y.std() == pytest.approx(1, rel=1e-14)
        assert "features and target standardised" in ds.source
    raw = load_dataset(name, standardized=False)
    assert not np.allclose(raw.X.std(axis=0), 1)


def test_binary_sets_keep_their_form():
    for name in ("exam", "xor", "moons", "circles", "breast-cancer"):
        ds = load_dataset(name)
        assert ds.task == "binary" and ds.y.dtype == np.float64 and ds.n_outputs == 1
        assert set(np.unique(ds.y)) <= {0.0, 1.0} and ds.n_classes == 2


def test_a_binary_set_reads_as_two_classes_for_the_class_losses():
    ds = load_dataset("breast-cancer", task="multiclass")
    assert ds.task == "multiclass" and ds.y.dtype == np.int64 and ds.n_outputs == 2
    assert np.array_equal(ds.y, load_dataset("breast-cancer").y)


@pytest.mark.parametrize(
    ("spec", "task", "message"),
    [
        ("iris", "regression", r"'iris' is a multiclass data set; it cannot be read as regression"),
        ("diabetes", "multiclass", r"'diabetes' is a regression data set; it cannot be read as"),
        ("wine", "binary", r"'wine' is a multiclass data set; it cannot be read as binary"),
        ("iris", "ordinal", r"unknown task 'ordinal'; expected one of binary, multiclass, "),
    ],
)
def test_a_set_refuses_another_task(spec, task, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(spec, task=task)


# --- CSV files -------------------------------------------------------------------------------


def _csv(tmp_path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_multiclass_labels(tmp_path):
    path = _csv(tmp_path, "a,b,kind\n1,2,0\n3,4,2\n5,6,1\n7,8,2\n")
    ds = load_csv(path, task="multiclass")
    assert ds.task == "multiclass" and ds.y.dtype == np.int64 and ds.y.tolist() == [0, 2, 1, 2]
    assert ds.n_classes == 3 and ds.classes == ["0", "1", "2"]
    assert "3 classes" in ds.source
    assert load_csv(path, task="auto").task == "multiclass"  # exactly 0..2, each present


def test_csv_classes_count_from_zero(tmp_path):
    """Labels 1..3 read as multiclass mean 4 classes: the docstring says so."""
    ds = load_csv(_csv(tmp_path, "a,kind\n1,1\n2,3\n3,2\n"), task="multiclass")
    assert ds.n_classes == 4 and np.bincount(ds.y).tolist() == [0, 1, 1, 1]


def test_csv_regression_target(tmp_path):
    path = _csv(tmp_path, "a,b,price\n1,2,10.5\n3,4,-2.25\n5,6,3\n")
    ds = load_csv(path, task="regression")
    assert ds.task == "regression" and ds.y.dtype == np.float64
    assert ds.y.tolist() == [10.5, -2.25, 3.0] and ds.n_outputs == 1
    assert load_csv(path, task="auto").task == "regression"
    std = load_dataset(str(path), task="regression")  # standardised: features and target
    assert abs(std.y.mean()) < 1e-15 and std.y.std() == pytest.approx(1, rel=1e-14)


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        ([0, 1, 1, 0], "binary"),
        ([1, 1, 1, 1], "binary"),
        ([0, 1, 2, 2], "multiclass"),
        ([0, 2, 2, 2], "regression"),  # class 1 absent: not the full 0..C-1
        ([1, 2, 3, 3], "regression"),  # no class 0
        ([0, 1, 1.5, 2], "regression"),
        ([-1, 0, 1, 2], "regression"),
    ],
)
def test_csv_auto_task_follows_the_documented_rule(tmp_path, labels, task):
    text = "a,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels))
    assert load_csv(_csv(tmp_path, text), task="auto").task == task


def test_csv_default_stays_binary(tmp_path):
    path = _csv(tmp_path, "hours,gpa,passed\n4,3.5,1\n1,2.0,3\n")
    with pytest.raises(
        ValueError,
        match=r"label column 'passed' must hold 0 or 1; row 3 has '3' \(for other labels pass "
        r"task='multiclass' or 'regression'\)",
    ):
        load_csv(path)
    ds = load_csv(_csv(tmp_path, "a,p\n1,0\n2,1\n"))
    assert ds.task == "binary" and ds.y.dtype == np.float64
    assert ds.source.endswith("(label column 'p')")  # as before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,k\n1,0\n2,1.5\n", r"label column 'k' must hold class numbers 0, 1, 2, \.\.\.; row 3 "
         r"has '1\.5'"),
        ("a,k\n1,0\n2,-1\n", r"label column 'k' must hold class numbers 0, 1, 2, \.\.\.; row 3 "
         r"has '-1'"),
    ],
)  # fmt: skip
def test_csv_multiclass_refuses_non_class_labels(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_csv(_csv(tmp_path, text), task="multiclass")


def test_csv_unknown_task(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'counts'; expected one of binary, "):
        load_csv(_csv(tmp_path, "a,k\n1,0\n"), task="counts")
