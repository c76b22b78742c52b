"""Where a report or an export goes: checked before the run, written atomically, never over what
nn-parity did not write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nn_parity.reports import RECORD_FORMAT

# the temporary folder beside a destination: "." + name + ".partial-" + mkdtemp's 8 characters
TEMP_EXTRA = len(".") + len(".partial-") + 8


LONGEST_FILE = len("gradient_descent.png") + 12  # room for the files written inside


@dataclass(frozen=True)
class Words:
    """How a destination is named in messages: at the command line or in Python."""

    flag: str  # "--out", "--export", "folder"
    what: str  # "the report", "the export"
    overwrite: str | None  # "--overwrite", "overwrite=True", None: no way to replace


def is_report_folder(folder: Path) -> bool:
    """True when `folder` holds a run record nn-parity wrote: a summary.json object with the
    record's format marker, or (records before the marker) nn-parity's version in it."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(summary, dict):
        return False
    versions = summary.get("versions")
    return summary.get("format") == RECORD_FORMAT or (
        isinstance(versions, dict) and "nn_parity" in versions
    )


def check_destination(path: Path, words: Words, *, overwrite: bool = False, owned=None) -> None:
    """Refuse, before any work, a destination that cannot be written or must not be replaced.

    `owned(folder)` tells whether an existing, non-empty folder is nn-parity's to replace
    (given only when the whole folder is replaced); raises ValueError in one line.
    """
    shown = f"{words.flag} {str(path)!r}"
    if path.name in ("", ".", ".."):
        raise ValueError(f"{shown} names no new folder; give a folder's name, e.g. ./report")
    if path.is_symlink():
        raise ValueError(f"{shown} is a symbolic link; nn-parity never replaces a link: "
                         "choose another path")  # fmt: skip
    if path.exists() and not path.is_dir():
        raise ValueError(f"{shown} exists and is not a folder; nn-parity never replaces a "
                         "file: choose another path")  # fmt: skip
    parent = _check_parent(path, words)
    _check_lengths(path, shown, parent)
    if owned is None or not path.is_dir() or not any(path.iterdir()):
        return
    if not owned(path):
        again = ", even with --overwrite" if overwrite and words.overwrite else ""
        raise ValueError(f"{shown} exists and is not empty, and nn-parity did not write it; "
                         f"refused{again}: choose another folder")  # fmt: skip
    if not overwrite:
        hint = f" or pass {words.overwrite} to replace it" if words.overwrite else ""
        raise ValueError(f"{shown} holds an earlier report; choose another folder{hint}")


def _check_parent(path: Path, words: Words) -> Path:
    """The nearest existing folder above `path` (missing ones are created): a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {words.what} under {str(parent)!r}: it is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {words.what}: {str(parent)!r} is not writable")
    return parent


def _check_lengths(path: Path, shown: str, parent: Path) -> None:
    name_max = _pathconf(parent, "PC_NAME_MAX", 255)
    path_max = _pathconf(parent, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(path.name))
    if size + TEMP_EXTRA > name_max:
        raise ValueError(
            f"{shown}: the name is {size} bytes; at most {name_max - TEMP_EXTRA} fit (it is "
            f"written first under a temporary name {TEMP_EXTRA} bytes longer, and names stop "
            f"at {name_max})"
        )
    full = len(os.fsencode(str(path.absolute()))) + TEMP_EXTRA + 1 + LONGEST_FILE
    if full > path_max:
        raise ValueError(f"{shown}: the path is too long ({full} bytes with the files inside; "
                         f"paths stop at {path_max})")  # fmt: skip


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False, merge: bool = False) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` when the block completes.

    overwrite: replace an existing folder `final` (never a link or a file: refused);
    merge: move the files into an existing `final`, each replacing its namesake.
    On any exception, KeyboardInterrupt and SIGTERM included, the temporary folder is removed
    and `final` is left as it was.
    """
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FileExistsError(errno.EEXIST, "exists and is a file or a link, never replaced")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if merge and final.is_dir():
            for entry in sorted(tmp.iterdir()):
                os.replace(entry, final / entry.name)
            tmp.rmdir()
        elif final.exists() and overwrite:
            _swap(tmp, final)
        else:
            os.rename(tmp, final)  # fails if final appeared meanwhile: never clobber
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, final: Path) -> None:
    """Put `tmp` in the place of the folder `final`; `final` comes back if that fails."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)  # the new folder is in place: done either way
