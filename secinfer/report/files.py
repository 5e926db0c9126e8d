"""Writing results: JSON that strict parsers accept and .npy arrays, each written whole or
not at all."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from secinfer.errors import UserError


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write strict JSON (`dumps_strict`) atomically: a half-written report never replaces
    a good one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_strict(data) + "\n")
    tmp.replace(path)


def dumps_strict(data: Any, indent: int | None = 2) -> str:
    """`data` as strict JSON (RFC 8259: no NaN or Infinity): non-finite numbers become null
    and, when `data` is a dict, their paths are listed under `non_finite` (appended to one
    already there). numpy scalars and arrays become numbers and lists; anything else that
    JSON cannot hold becomes its `str`."""
    found: list[str] = []
    clean = _finite_only(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = [*(clean.get("non_finite") or []), *found]
    return json.dumps(clean, indent=indent, allow_nan=False, default=str)


def _finite_only(value: Any, path: str, found: list[str]) -> Any:
    """A copy of `value` with non-finite floats as None, their paths appended to `found`."""
    if isinstance(value, dict):
        return {
            str(k): _finite_only(v, f"{path}.{k}" if path else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_finite_only(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy / torch values
        return _finite_only(value.tolist(), path, found)
    if isinstance(value, float) and not math.isfinite(value):
        found.append(path or "(value)")
        return None
    return value


def check_destination(path: Path | None, flag: str) -> None:
    """UserError unless a file can be created in `path`'s directory: it exists, is a
    directory, and takes a new file (tried: a probe file is created and removed, so /proc
    and read-only mounts fail here, before a long run, not after it)."""
    if path is None:
        return
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a directory")
    if path.is_dir():
        raise UserError(f"{flag} {path}: a directory; give a file name in it")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"{flag} {path}: cannot write in {parent} ({reason}); choose a writable directory"
        ) from None


def write_npy(path: str | Path, array: Any) -> None:
    """Write an array (numpy or torch) as .npy atomically, like `write_json`."""
    import numpy as np

    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(array), allow_pickle=False)
    tmp.replace(path)
