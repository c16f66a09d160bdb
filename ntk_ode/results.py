"""Writing, provenance and resuming: the one module that owns results files.

Every results file of the package (experiment results and cells, sweeps, training checkpoints,
the CLI's outputs) goes through here:

* **atomic writes** (:func:`atomic_write_json`, :func:`atomic_write_npz`): a unique temporary
  file in the target folder, then ``os.replace``; parent folders are created; files get mode
  0644 (readable by the group and others, as ``open`` would give under the usual umask).
* **provenance** (:func:`provenance`): package versions, the full config, a fingerprint of the
  data (:func:`fingerprint`), the time and the host's Python.
* **one resume policy** (:func:`check_resume`): a saved run resumes only when its identity (the
  config without its *extendable* fields) equals the new one; otherwise the resume is refused
  with a :class:`ResumeError` naming every differing field. Extendable fields (steps, widths,
  seeds) may grow: the finished part is reused and the rest computed.
* **safe reading** (:func:`read_json`, :func:`read_npz`): a truncated, foreign or unreadable
  file is refused with a message naming it, never used silently; pickles are never loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "CHECKSUM_KEY",
    "FILE_MODE",
    "check_payload",
    "payload_checksum",
    "LockedError",
    "exclusive",
    "ResumeError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npz",
    "check_resume",
    "config_fingerprint",
    "fingerprint",
    "jsonable",
    "provenance",
    "read_json",
    "read_npz",
    "versions",
]

FILE_MODE = 0o644
CHECKSUM_KEY = "__checksum__"  # the field of a JSON record that seals its payload
log = logging.getLogger("ntk_ode")


class ResumeError(ValueError):
    """A saved run cannot be resumed with the given configuration (or the file is not ours)."""


class LockedError(RuntimeError):
    """Another process is writing the same results file."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` while a run reads, computes and writes ``path``.

    Two runs writing the same output would otherwise interleave their writes and lose one
    run's results; the second one is refused at once. The lock is advisory (``fcntl.flock``)
    and released when the process ends, even by ``kill -9``. The ``.lock`` file is removed when
    the block ends (it stays only after a kill, empty and unlocked, and the next run reuses it).

    Args:
        path: the results file (its folder is created).

    Yields:
        Nothing; the lock is held inside the ``with`` block.

    Raises:
        LockedError: another process holds the lock.
    """
    lock_path = os.fspath(path) + ".lock"
    prepare_output(lock_path)
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, FILE_MODE)
        except OSError as e:
            if os.path.islink(lock_path):
                raise OSError(f"{lock_path} is a symbolic link: refusing to create or lock through it") from e
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                f"{os.fspath(path)} is being written by another process (lock {lock_path}); "
                "wait for it to finish or use another output path"
            ) from None
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # its holder removed it between our open and our lock: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still holding the lock, so no other run is between open and lock
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)


def versions() -> dict[str, str]:
    """Versions of ntk_ode and of the numerical libraries it runs on.

    Returns:
        A dict ``{package: version}`` for ntk_ode, jax, jaxlib, diffrax, equinox, optax and numpy.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ntk_ode", "jax", "jaxlib", "diffrax", "equinox", "optax", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def fingerprint(*arrays: Any) -> str:
    """A short SHA-256 fingerprint of arrays (their dtype, shape and bytes), in order.

    Args:
        *arrays: array-likes (numpy or JAX) or None (hashed as a marker).

    Returns:
        The first 16 hex digits of the digest.
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        arr = np.ascontiguousarray(np.asarray(a))
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.reshape(-1).view(np.uint8).data)  # no copy of large inputs
    return h.hexdigest()[:16]


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short fingerprint of a config (its JSON form with sorted keys).

    Args:
        config: a JSON-able mapping.

    Returns:
        16 hex digits.
    """
    text = json.dumps(jsonable(dict(config)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jsonable(v: Any) -> Any:
    """``v`` with numpy arrays and scalars, tuples and dataclass-free containers made JSON-native.

    Args:
        v: nested dicts, lists, tuples, numpy/JAX arrays and scalars.

    Returns:
        The same structure with lists for arrays and tuples and Python numbers for scalars.
    """
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return np.asarray(v).tolist()
    return v


def provenance(config: Mapping[str, Any], **timing: float) -> dict[str, Any]:
    """The record that every results file carries.

    Args:
        config: the full configuration (with solver tolerances and data fingerprints).
        **timing: named durations in seconds (e.g. ``time_s=...``).

    Returns:
        ``{"config", "versions", "python", "written_at", **timing}``, JSON-native.
    """
    return {
        "config": jsonable(dict(config)),
        "versions": versions(),
        "python": platform.python_version(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: float(v) for k, v in timing.items()},
    }


def prepare_output(path: str | os.PathLike) -> str:
    """Make sure ``path`` can be written: create its folder, refuse a folder or a read-only place.

    Commands call this before any computation, so that a bad output path fails at once.

    Args:
        path: the file to be written.

    Returns:
        Its folder (absolute).

    Raises:
        OSError: the folder cannot be created, is not writable, or ``path`` is a folder or a link.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output folder {folder!r} for {path!r}: {e.strerror or e}") from e
    if os.path.islink(path):
        raise OSError(f"{path!r} is a symbolic link: refusing to write through it (remove it or give another path)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; give a file path")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"the output folder {folder!r} is not writable")
    try:  # a real write: some folders pass the access check and refuse files (/proc, read-only mounts)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ntk_ode_probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"cannot write files into the output folder {folder!r} ({e.strerror})") from e
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (unique temp file + rename), mode 0644.

    Args:
        path: target file; its parent folders are created.
        data: the bytes to write.

    Returns:
        The path written, as a string.

    Raises:
        OSError: the folder cannot be created or written (the message names the path).
    """
    path = os.fspath(path)
    folder = prepare_output(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, f"writing {path} failed: {e.strerror or e} (nothing was replaced)") from e
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> str:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: target file.
        obj: anything :func:`jsonable` turns into JSON.

    Returns:
        The path written.

    Raises:
        OSError: the file cannot be written.
    """
    obj = jsonable(obj)
    if isinstance(obj, dict):  # a results record: sealed by the checksum of its payload
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj[CHECKSUM_KEY] = payload_checksum(obj)
    text = json.dumps(obj, indent=1, allow_nan=True)
    return atomic_write_bytes(path, text.encode())


def payload_checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON record without its own checksum field (keys sorted, floats as JSON
    writes them, so a record read back hashes the same).

    Args:
        record: a JSON-able dict.

    Returns:
        The hex digest.
    """
    body = {k: v for k, v in jsonable(dict(record)).items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def check_payload(record: Any, path: str) -> Any:
    """Refuse a JSON record whose checksum field does not match its payload (edited by hand or
    damaged after it was written); records without one (older files) pass.

    Args:
        record: the parsed JSON.
        path: its file (named in the message).

    Returns:
        The record without its checksum field.

    Raises:
        ResumeError: the checksum does not match.
    """
    if not isinstance(record, dict) or CHECKSUM_KEY not in record:
        return record
    if record[CHECKSUM_KEY] != payload_checksum(record):
        raise ResumeError(
            f"{path} was changed after ntk_ode wrote it (its {CHECKSUM_KEY} does not match its contents), so it "
            "is not used: restore it, or delete it to compute again (read_json(path, verify=False) reads it "
            "for inspection)"
        )
    return {k: v for k, v in record.items() if k != CHECKSUM_KEY}


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
    """Write arrays (and a JSON ``meta`` record inside the same file) to ``path`` atomically.

    Keeping the metadata in the archive makes a checkpoint one file: there is no moment at
    which its arrays and its description disagree.

    Args:
        path: target ``.npz`` file.
        arrays: name -> array.
        meta: JSON-able record stored as the entry ``__meta__``.

    Returns:
        The path written.

    Raises:
        ValueError: an array is named ``__meta__``.
        OSError: the file cannot be written.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if "__meta__" in arrays:
        raise ValueError("'__meta__' is reserved for the metadata record")
    if CHECKSUM_KEY in arrays:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the archive's checksum")
    if meta is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(jsonable(meta)).encode(), dtype=np.uint8)
    arrays[CHECKSUM_KEY] = np.frombuffer(_arrays_checksum(arrays).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike, required: Iterable[str] = (), verify: bool = True) -> dict[str, Any]:
    """Read a JSON results file, refusing a truncated, foreign or hand-edited one.

    Args:
        path: the file.
        required: top-level keys it must have.
        verify: check the payload against its checksum (False: read it for inspection).

    Returns:
        The parsed dict (without its checksum field).

    Raises:
        ResumeError: the file is unreadable, not JSON, not an object, lacks a required key, or
            (with ``verify``) was changed after it was written.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path} is not a readable results file ({e}); move it away or delete it") from e
    if verify:
        data = check_payload(data, path)
    elif isinstance(data, dict):
        data.pop(CHECKSUM_KEY, None)
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ResumeError(
            f"{path} is not an ntk_ode results file of this kind (missing {missing}); move it away or delete it"
        )
    return data


def _arrays_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names sorted; each name, dtype, shape and bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name};{arr.dtype.str};{arr.shape};".encode())
        h.update(arr.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def read_npz(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Read an ``.npz`` written by :func:`atomic_write_npz` (never unpickling anything).

    The archive carries a SHA-256 of its entries (``__checksum__``); an archive rewritten or edited
    after ntk_ode wrote it is refused (archives without one, from older versions, pass).

    Args:
        path: the file.
        verify: check the entries against the checksum (False: read it for inspection).

    Returns:
        ``(arrays, meta)``; ``meta`` is None when the file has no ``__meta__`` record.

    Raises:
        ResumeError: the file is truncated, not an npz archive, holds object arrays, or (with
            ``verify``) was changed after it was written.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ResumeError(
            f"{path} is not a readable .npz archive of ours ({type(e).__name__}: {e}); move it away or delete it"
        ) from e
    stored = arrays.pop(CHECKSUM_KEY, None)
    if verify and stored is not None and stored.tobytes().decode(errors="replace") != _arrays_checksum(arrays):
        raise ResumeError(
            f"{path} was changed after ntk_ode wrote it (its {CHECKSUM_KEY} does not match its arrays), so it is "
            "not used: restore it, or delete it to compute again (read_npz(path, verify=False) reads it for "
            "inspection)"
        )
    raw = arrays.pop("__meta__", None)
    if raw is None:
        return arrays, None
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path}: its metadata record is corrupt ({e}); move it away or delete it") from e
    return arrays, meta


def _differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(new))
    return [
        f"{k}: saved {saved.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != new.get(k, "<absent>")
    ]


def check_resume(
    path: str, saved: Mapping[str, Any], config: Mapping[str, Any], extendable: Iterable[str] = ()
) -> None:
    """The resume policy: refuse unless ``saved`` and ``config`` agree outside ``extendable``.

    Both configs are compared as JSON sees them (tuples equal lists). Extendable fields are
    those a run can grow (number of steps, list of widths, number of seeds); the caller then
    reuses the finished part, which must not depend on them.

    Args:
        path: the saved file (named in the message).
        saved: the config stored in it.
        config: the config of the new run.
        extendable: fields allowed to differ.

    Raises:
        ResumeError: naming every differing field with its saved and new value.
    """
    ext = set(extendable)
    a = {k: v for k, v in jsonable(dict(saved)).items() if k not in ext}
    b = {k: v for k, v in jsonable(dict(config)).items() if k not in ext}
    diff = _differences(a, b)
    if diff:
        raise ResumeError(
            f"{path} holds a run with another configuration, so it cannot be resumed "
            f"({'; '.join(diff)}). Use another output path, or delete the file to start over."
        )
