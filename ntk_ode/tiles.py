"""Kernels larger than memory: written tile by tile to ``.npy`` files, resumable, split over processes.

:func:`kernel_to_disk` evaluates the infinite-width kernels of a data set in square tiles of
``tile x tile`` inputs and writes each tile into one ``.npy`` file per kernel (``nngp.npy``,
``ntk.npy``, ...) in a folder, which ``numpy.load(..., mmap_mode="r")`` then reads without loading
it. Each finished tile leaves a small marker file with its error estimate, written after its data
reached the disk, so a killed run resumes without recomputing finished tiles; a run with another
configuration is refused, naming what differs. Under ``jax.distributed`` (see
:mod:`ntk_ode.distributed`) every process takes its share of the tiles and writes them itself.

Tile kernels (``method``):

* ``"zonal"`` (inputs of one norm): :func:`ntk_ode.harmonics.zonal_kernel`, a certified function
  of the cosine, built once; tiles cost a matrix product and a series evaluation, one compiled
  tile shape (docs/theory.md section 8);
* ``"table"`` (inputs of several norms): :func:`ntk_ode.kernels.norm_angle_kernel`, the 3-D
  (norm, norm, angle) interpolant, certified against direct solves (section 14);
* ``"direct"``: :func:`ntk_ode.kernel_fn` on each tile (any inputs; slow);
* ``"auto"``: the engine's rule (:func:`ntk_ode.kernels.strategy.choose`): zonal for inputs of one
  nonzero norm, the table for several nonzero norms, else direct.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import positive_int
from .batching import pad_rows, tile_starts
from .distributed import split
from .harmonics import zonal_kernel
from .kernels import kernel_fn, norm_angle_kernel, parse_get
from .kernels.interpolants import clenshaw, cosine_to_u, cosines
from .kernels.strategy import TABLE_MIN_PAIRS, choose, same_norm
from .model import NeuralODE
from .results import (
    ResumeError,
    atomic_write_json,
    check_resume,
    fingerprint,
    jsonable,
    read_json,
    versions,
)
from .store import (
    StoreError,
    file_checksum,
    marker_path,
    open_nofollow,
    read_markers,
    read_record,
    safe_path,
    tile_checksums,
    verify,
)

METHODS = ("auto", "zonal", "table", "direct")
DTYPES = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class KernelStore:
    """Kernels on disk, written by :func:`kernel_to_disk`.

    Attributes:
        folder: the folder holding ``{name}.npy``, ``manifest.json`` and ``tiles/``.
        names: the kernels stored (a subset of ``ntk_ode.kernels.GETS``).
        shape: (N1, N2).
        error: estimated maximum absolute error per kernel (over all tiles).
        method: the tile kernel used ("zonal", "table" or "direct").
    """

    folder: str
    names: tuple
    shape: tuple
    error: dict
    method: str

    def path(self, name: str) -> str:
        """The ``.npy`` file of kernel ``name``.

        Args:
            name: one of ``names``.

        Returns:
            Its path.
        """
        if name not in self.names:
            raise ValueError(f"name must be one of the stored kernels {self.names}, got {name!r}")
        return os.path.join(self.folder, f"{name}.npy")

    def load(self, name: str, mmap: bool = True) -> np.ndarray:
        """Kernel ``name``: memory-mapped read-only (default) or loaded into memory.

        Args:
            name: one of ``names``.
            mmap: map the file instead of reading it.

        Returns:
            The (N1, N2) array.
        """
        return np.load(self.path(name), mmap_mode="r" if mmap else None)


def tile_kernel(
    model: NeuralODE,
    x1: Any,
    x2: Any,
    names: Sequence[str],
    *,
    depth: int | None = None,
    rtol: float = 1e-8,
    method: str = "auto",
    tile: int = 1024,
    progress: bool = False,
) -> tuple[str, Callable]:
    """The function that computes one tile, chosen and prepared for the inputs ``x1``, ``x2``.

    Args:
        model: the Neural ODE.
        x1: all row inputs (N1, d) (host array).
        x2: all column inputs (N2, d).
        names: kernels to compute.
        depth: None for the ODE, L for the ResNet.
        rtol: target relative accuracy.
        method: one of ``METHODS``.
        tile: tile edge (the compiled shape of the fast paths).
        progress: progress bars over the solves that build a table.

    Returns:
        ``(method, f)`` with the resolved method and ``f(a, b) -> ({name: (na, nb) array},
        {name: error})``, ``a`` and ``b`` row blocks of ``x1`` and ``x2`` of at most ``tile`` rows.

    Raises:
        ValueError: an unknown method, or "zonal" for inputs of several norms.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    norms = np.concatenate([np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)])  # no copy of the inputs
    same = bool(norms.min() > 0) and same_norm(norms)
    if method == "zonal" and not same:
        raise ValueError("method='zonal' needs inputs of one (nonzero) norm; use 'table' or 'direct'")
    if method == "auto":  # the engine's rule; tiles always have enough pairs for an interpolant
        plan = choose(
            norms, TABLE_MIN_PAIRS + 1, depth=depth, nodes=None, activation=model.activation, kinked_zonal=True
        )
        method = plan[0]
    names = tuple(names)
    if method == "direct":
        kfn = kernel_fn(model, depth, rtol=rtol, table=False)  # per-pair solves: never a table per tile

        def direct(a, b):
            k, e = kfn(a, b, get=names, with_error=True)
            return {n: np.asarray(getattr(k, n)) for n in names}, {n: float(getattr(e, n)) for n in names}

        return method, direct
    d = x1.shape[1]
    fns: list[Any]
    if method == "zonal":  # one table of solves; one product, one u and one fused recurrence
        fns = cast(list, zonal_kernel(model, d, depth=depth, get=names, radius=float(norms[0]), rtol=rtol))
        Q = max(f.coefficients.shape[0] for f in fns)
        coef = jnp.stack([jnp.pad(f.coefficients, (0, Q - f.coefficients.shape[0])) for f in fns], axis=1)

        def zonal_gram(a, b):
            return clenshaw(coef[:, :, None, None], cosine_to_u(cosines(a, b)))

        gram = jax.jit(zonal_gram)
    else:
        if norms.min() <= 0:
            raise ValueError("method='table' needs nonzero inputs; use 'direct'")
        lo, hi = float(norms.min()), float(norms.max())
        fns = cast(list, norm_angle_kernel(model, d, lo, hi, depth=depth, get=names, rtol=rtol, progress=progress))
        gram = jax.jit(lambda a, b: jnp.stack([f.gram(a, b) for f in fns]))
    errors = {n: float(f.error) for n, f in zip(names, fns)}

    def fast(a, b):
        na, nb = a.shape[0], b.shape[0]
        out = np.asarray(gram(pad_rows(a, tile), pad_rows(b, tile)))[:, :na, :nb]
        return dict(zip(names, out)), errors

    return method, fast


MARKER_BYTES = 4096  # disk space of one tile marker (one file-system block)


def _open_store(folder, names, shape, dtype, n_tiles):
    """Create the ``.npy`` files at full size, reserving their disk space, and check the space of
    the ``n_tiles`` markers too (a full disk fails here, before any computation)."""
    import shutil

    need = n_tiles * MARKER_BYTES
    if shutil.disk_usage(folder).free < need + len(names) * math.prod(shape) * np.dtype(dtype).itemsize:
        free = shutil.disk_usage(folder).free
        raise OSError(
            28,
            f"{folder}: {free / 1e9:.2f} GB free, but the store needs "
            f"{(need + len(names) * math.prod(shape) * np.dtype(dtype).itemsize) / 1e9:.2f} GB "
            f"(arrays and {n_tiles} tile markers); nothing was computed",
        )
    for n in names:
        path = safe_path(folder, f"{n}.npy")
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        offset = arr.offset
        del arr
        size = offset + math.prod(shape) * np.dtype(dtype).itemsize
        fd = open_nofollow(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            for m in names:
                p = os.path.join(folder, f"{m}.npy")
                if os.path.exists(p):
                    os.unlink(p)
            raise OSError(
                e.errno, f"cannot reserve {size / 1e9:.2f} GB for {path!r} ({e.strerror}); nothing was computed"
            ) from e
        finally:
            os.close(fd)


def _write_block(fd: int, offset: int, n2: int, row: int, col: int, block: np.ndarray) -> None:
    item = block.dtype.itemsize
    for r in range(block.shape[0]):
        data = np.ascontiguousarray(block[r]).tobytes()
        pos = offset + ((row + r) * n2 + col) * item
        while data:
            written = os.pwrite(fd, data, pos)
            data, pos = data[written:], pos + written


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def kernel_to_disk(
    model: NeuralODE,
    x1: Any,
    x2: Any = None,
    *,
    folder: str | os.PathLike,
    depth: int | None = None,
    get: Sequence[str] = ("nngp", "ntk"),
    tile: int = 1024,
    dtype: str = "float64",
    rtol: float = 1e-8,
    method: str = "auto",
    progress: bool = False,
    repair: bool = False,
) -> KernelStore:
    """Write the infinite-width kernels of ``x1`` (and ``x2``) to ``folder``, tile by tile.

    Memory use is a few tiles (plus the inputs), whatever N. After an interruption the same call
    resumes: finished tiles (those with a marker in ``folder/tiles``) are kept. Under
    ``jax.distributed`` with P processes, process p computes the tiles ``k`` with ``k % P == p``
    and writes them into the shared files (the folder must be on a file system all processes
    see); all processes return the same store. For ``x2=None`` only the tiles on and above the
    diagonal are computed, each written twice.

    Args:
        model: the Neural ODE.
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for the symmetric kernel of ``x1``.
        folder: output folder (created); holds ``{name}.npy`` for each kernel in ``get``.
        depth: None for the ODE, L for the ResNet.
        get: kernels to write (from ``ntk_ode.kernels.GETS``).
        tile: tile edge in inputs (memory ~ 8 tile^2 per kernel, times a few).
        dtype: "float64" or "float32" (the files; tiles are computed in float64).
        rtol: target relative accuracy of the tile kernel (default 1e-8, as kernel_fn in float64).
        method: one of ``METHODS`` (see the module's docstring).
        progress: a progress bar over this process's tiles.
        repair: on a rerun of a finished store that fails verification
            (:func:`ntk_ode.store.verify`), recompute the damaged tiles instead of refusing.

    Returns:
        A :class:`KernelStore`.

    Raises:
        ValueError: bad arguments.
        ResumeError: ``folder`` holds a run with another configuration (the message names the
            differing fields).
        OSError: the folder is not writable, the disk is too small (checked before computing),
            or a write failed (finished tiles are kept).
        StoreError: a path inside the store is a symbolic link, or a finished store is
            damaged (truncated, edited or deleted files, named) and ``repair`` is False.
    """
    names, _ = parse_get(get)
    tile = positive_int("tile", tile)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and np.asarray(x).dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real (float or integer) array, got dtype {np.asarray(x).dtype}")
    x1 = np.asarray(x1, np.float64)
    symmetric = x2 is None
    x2 = x1 if symmetric else np.asarray(x2, np.float64)
    for name, x in (("x1", x1), ("x2", x2)):
        if x.ndim != 2 or x.shape[0] < 1 or not np.all(np.isfinite(x)):
            raise ValueError(f"{name} must be a finite (N, d) array with N >= 1, got shape {x.shape}")
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x2 has {x2.shape[1]} features, x1 has {x1.shape[1]}")
    folder = os.path.abspath(os.fspath(folder))
    shape = (x1.shape[0], x2.shape[0])
    config = {
        "model": model.config(),
        "depth": depth,
        "get": names,
        "tile": int(tile),
        "dtype": dtype,
        "rtol": float(rtol),
        "method": method,
        "shape": shape,
        "inputs": fingerprint(x1, None if symmetric else x2),
    }
    manifest = safe_path(folder, "manifest.json")
    starts = tile_starts(*shape, int(tile), symmetric)
    if jax.process_index() == 0:
        if os.path.exists(manifest):
            saved = _read_manifest(manifest)
            check_resume(manifest, saved["config"], config)
            if saved.get("checksums"):  # a finished store: verify it, repair on request
                _check_finished(folder, starts, repair, names, shape, dtype)
        else:
            if os.path.isdir(folder) and os.listdir(folder):
                raise ResumeError(f"{folder} is not empty and holds no manifest.json: give a new or empty folder")
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"the output folder {folder!r} is not writable")
            _open_store(folder, names, shape, dtype, len(starts))  # a full disk leaves the folder empty
            os.makedirs(safe_path(folder, "tiles"), exist_ok=True)
            saved = {"config": config, "versions": versions(), "symmetric": symmetric}
            atomic_write_json(manifest, saved)
    _barrier("ntk_ode.tiles.created")
    done = read_markers(folder)
    mine = [s for s in split(starts) if s not in done]
    if mine:
        resolved, tile_fn = tile_kernel(
            model, x1, x2, names, depth=depth, rtol=rtol, method=method, tile=int(tile), progress=progress
        )
        job = _Job(folder, names, shape, dtype, int(tile), symmetric, resolved)
        _compute(job, x1, x2, mine, tile_fn, progress, len(starts) - len(mine))
    _barrier("ntk_ode.tiles.finished")
    done = read_markers(folder)
    missing = [s for s in starts if s not in done]
    if missing:
        raise RuntimeError(f"kernel_to_disk: {len(missing)} tiles of {folder} are not finished (first {missing[0]})")
    if jax.process_index() == 0:
        saved = _read_manifest(manifest)  # (repair dropped its checksums)
        if not saved.get("checksums"):  # finished now: record the whole files' checksums
            sums = {n: file_checksum(safe_path(folder, f"{n}.npy")) for n in names}
            atomic_write_json(manifest, {**saved, "symmetric": symmetric, "checksums": sums})
    error = {n: _max_error([done[s]["error"].get(n, math.nan) for s in starts], n, folder) for n in names}
    methods = {done[s]["method"] for s in starts}
    return KernelStore(folder, names, shape, error, "+".join(sorted(methods)))


@dataclasses.dataclass(frozen=True)
class _Job:
    folder: str
    names: tuple
    shape: tuple
    dtype: str
    tile: int
    symmetric: bool
    method: str


def _compute(job: _Job, x1, x2, mine, f, progress, already) -> None:
    folder, names, shape, dtype, tile, symmetric = job.folder, job.names, job.shape, job.dtype, job.tile, job.symmetric
    fds = {n: open_nofollow(safe_path(folder, f"{n}.npy"), os.O_RDWR) for n in names}
    offsets = {n: np.load(safe_path(folder, f"{n}.npy"), mmap_mode="r").offset for n in names}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine) + already, initial=already, desc="kernel tiles", unit="tile")
    try:
        for i, j in mine:
            blocks, errors = f(x1[i : i + tile], x2[j : j + tile])
            try:
                written = {}
                for n in names:
                    block = written[n] = blocks[n].astype(dtype)
                    _write_block(fds[n], offsets[n], shape[1], i, j, block)
                    if symmetric and i != j:
                        _write_block(fds[n], offsets[n], shape[1], j, i, block.T)
                    os.fdatasync(fds[n])
                marker = {"error": errors, "method": job.method, "checksums": tile_checksums(written)}
                atomic_write_json(marker_path(folder, i, j), marker)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"writing tile ({i}, {j}) to {folder} failed ({e.strerror}); the finished tiles are kept "
                    "and the same call resumes after the cause is fixed",
                ) from e
            if bar is not None:
                bar.update(1)
    finally:
        for fd in fds.values():
            os.close(fd)
        if bar is not None:
            bar.close()


def _read_manifest(path: str) -> dict[str, Any]:
    saved = read_record(path, "the manifest", "move the folder away and start a new one")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise StoreError(f"{path} is not a kernel store's manifest (no 'config')")
    return saved


def _check_finished(folder, starts, repair, names, shape, dtype) -> None:
    """Verify a finished store; with ``repair``, drop the damaged tiles' markers (and recreate a
    missing or truncated array) so that they are computed again."""
    report = verify(folder, starts)
    if report.ok:
        return
    if not repair:
        raise StoreError(
            f"{folder} is damaged: {report.message()}. Rerun with repair=True (ntk-ode kernel ... --repair) "
            "to recompute the damaged tiles"
        )
    import logging

    logging.getLogger("ntk_ode").warning("repairing %s: %s", folder, report.message())
    for n in names:
        path = safe_path(folder, f"{n}.npy")
        try:
            ok = np.load(path, mmap_mode="r", allow_pickle=False).shape == tuple(shape)
        except (OSError, ValueError, EOFError):
            ok = False
        if not ok:  # the whole array is gone: every tile again
            if os.path.exists(path):
                os.unlink(path)
            _open_store(folder, (n,), shape, dtype, 0)
    for i, j in report.damaged:
        p = marker_path(folder, i, j)
        if os.path.exists(p):
            os.unlink(p)
    saved = _read_manifest(safe_path(folder, "manifest.json"))
    saved.pop("checksums", None)
    atomic_write_json(safe_path(folder, "manifest.json"), saved)


def _max_error(errors: list, name: str, folder: str) -> float:
    """The largest tile error; NaN (with a warning) when a tile's error is unknown, never dropped."""
    arr = np.asarray(errors, float)
    if np.any(np.isnan(arr)):
        import warnings

        warnings.warn(
            f"{folder}: {int(np.sum(np.isnan(arr)))} tiles have no finite error estimate of {name}; "
            "the store's error is reported as NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan
    return float(arr.max())


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a kernel folder: its config and the library versions that wrote it.

    Args:
        folder: a folder written by :func:`kernel_to_disk`.

    Returns:
        ``{"config": {...}, "versions": {...}}``.
    """
    return jsonable(read_json(os.path.join(os.fspath(folder), "manifest.json"), verify=False))
