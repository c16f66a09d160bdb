"""Integrity of kernels on disk: no writes through links, checksums, verification.

A store written by :func:`ntk_ode.tiles.kernel_to_disk` is a folder with ``{name}.npy`` per
kernel, ``manifest.json`` and one marker ``tiles/{i}_{j}.json`` per finished tile. Here:

* **no links**: :func:`safe_path` refuses a path inside the store that is, or passes through, a
  symbolic link, and :func:`open_nofollow` opens files with ``O_NOFOLLOW``, so a link planted at
  an array, at ``tiles/`` or at a marker never redirects a write elsewhere;
* **checksums**: each marker records the SHA-256 of its tile's bytes for every kernel
  (:func:`tile_checksums`), and a finished store's manifest the SHA-256 of each whole file
  (:func:`file_checksum`);
* **verification** (:func:`verify`): a truncated, edited or deleted array or marker is found and
  named without recomputing anything; :func:`ntk_ode.tiles.kernel_to_disk` runs it on every
  rerun of a finished store and, with ``repair=True``, recomputes the damaged tiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from typing import Any

import numpy as np

from .results import ResumeError, check_payload

__all__ = [
    "StoreError",
    "Verification",
    "file_checksum",
    "marker_path",
    "open_nofollow",
    "read_marker",
    "read_record",
    "read_markers",
    "safe_path",
    "tile_checksums",
    "tile_region",
    "verify",
]


class StoreError(OSError):
    """A store on disk is damaged, or a path inside it is a link (the message names the file)."""


def safe_path(folder: str, *parts: str) -> str:
    """``folder/parts...``, refusing any component below ``folder`` that is a symbolic link.

    Args:
        folder: the store's folder (itself may be a link: the user chose it).
        *parts: components below it.

    Returns:
        The joined path.

    Raises:
        StoreError: a component exists and is a symbolic link.
    """
    path = folder
    for part in parts:
        path = os.path.join(path, part)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise StoreError(
                    f"{path} is a symbolic link: refusing to write through it (a store's files must be "
                    "plain files inside its folder; remove the link)"
                )
        except FileNotFoundError:
            pass
    return path


def open_nofollow(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link at ``path``.

    Args:
        path: the file.
        flags: ``os.O_*`` flags (``O_NOFOLLOW`` is added).
        mode: permissions of a created file.

    Returns:
        The file descriptor.

    Raises:
        StoreError: ``path`` is a symbolic link.
        OSError: any other failure to open.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if os.path.islink(path):
            raise StoreError(f"{path} is a symbolic link: refusing to open it for writing") from e
        raise


def marker_path(folder: str, i: int, j: int) -> str:
    """The marker of tile ``(i, j)``, refusing links at ``tiles/`` or at the marker.

    Args:
        folder: the store.
        i: the tile's first row.
        j: its first column.

    Returns:
        The path.
    """
    return safe_path(folder, "tiles", f"{i}_{j}.json")


def tile_region(array: np.ndarray, i: int, j: int, tile: int) -> np.ndarray:
    """The block of tile ``(i, j)`` in an (N1, N2) array, as contiguous bytes' source.

    Args:
        array: the kernel (a memory map is read only here).
        i: first row.
        j: first column.
        tile: tile edge.

    Returns:
        The (<= tile, <= tile) block.
    """
    return np.ascontiguousarray(array[i : i + tile, j : j + tile])


def tile_checksums(blocks: dict[str, np.ndarray]) -> dict[str, str]:
    """SHA-256 of each block's bytes (C order, as stored).

    Args:
        blocks: ``{name: block}`` in the store's dtype.

    Returns:
        ``{name: hex digest}``.
    """
    return {n: hashlib.sha256(np.ascontiguousarray(b).tobytes()).hexdigest() for n, b in blocks.items()}


def file_checksum(path: str, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes.

    Args:
        path: the file.
        chunk: bytes read at a time.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_record(path: str, what: str, remedy: str) -> Any:
    """A JSON record of a store (manifest or marker), checked against its payload checksum.

    Args:
        path: the file.
        what: what it is (for the message).
        remedy: what the user can do (for the message).

    Returns:
        The parsed record without its checksum field.

    Raises:
        StoreError: unreadable, not JSON, or changed after it was written (the file is named).
    """
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what} {path} is unreadable or not JSON ({e}); {remedy}") from e
    try:
        return check_payload(record, path)
    except ResumeError as e:
        raise StoreError(f"{what} {path} was changed after it was written; {remedy}") from e


def read_marker(path: str) -> dict[str, Any]:
    """One tile marker, validated.

    Args:
        path: the marker file.

    Returns:
        ``{"error": {name: float}, "method": str, ...}``.

    Raises:
        StoreError: unreadable, not JSON, or without its fields (the file is named).
    """
    marker = read_record(path, "tile marker", "delete it to recompute the tile")
    if not isinstance(marker, dict) or not isinstance(marker.get("error"), dict) or "method" not in marker:
        raise StoreError(f"tile marker {path} lacks its 'error' and 'method' fields; delete it to recompute the tile")
    return marker


def read_markers(folder: str) -> dict[tuple[int, int], dict[str, Any]]:
    """Every tile marker of a store, by tile corner.

    Args:
        folder: the store.

    Returns:
        ``{(i, j): marker}``.

    Raises:
        StoreError: ``tiles/`` is a link, or a marker is named oddly or damaged.
    """
    tiles = safe_path(folder, "tiles")
    if not os.path.isdir(tiles):
        return {}
    done = {}
    for name in sorted(os.listdir(tiles)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(tiles, name)
        try:
            i, j = (int(v) for v in name[:-5].split("_"))
        except ValueError:
            raise StoreError(f"{path} is not a tile marker (expected tiles/ROW_COLUMN.json)") from None
        if os.path.islink(path):
            raise StoreError(f"{path} is a symbolic link, not a tile marker")
        done[(i, j)] = read_marker(path)
    return done


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :func:`verify` found.

    Attributes:
        ok: nothing is damaged or missing.
        damaged: tiles ``(i, j)`` whose bytes differ from their checksum (or whose marker is
            missing or has no checksum, when the array cannot vouch for them).
        problems: one message per finding, naming the file.
    """

    ok: bool
    damaged: tuple
    problems: tuple

    def message(self) -> str:
        """The findings as one text.

        Returns:
            The message.
        """
        return "; ".join(self.problems) if self.problems else "the store is intact"


def _open_array(path: str, shape: tuple, dtype: str) -> tuple[np.ndarray | None, str | None]:
    if not os.path.exists(path):
        return None, f"{path} is missing"
    if os.path.islink(path):
        return None, f"{path} is a symbolic link"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return None, f"{path} is truncated or not a .npy array ({e})"
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        return None, f"{path} holds {arr.dtype}{arr.shape}, expected {dtype}{tuple(shape)}"
    return arr, None


def verify(folder: str | os.PathLike, starts: list | None = None) -> Verification:
    """Check a store against its checksums without recomputing anything.

    A finished store (its manifest has whole-file checksums) is checked file by file; a file
    that differs, and any unfinished store, are checked tile by tile, so every damaged tile is
    named.

    Args:
        folder: a folder written by :func:`ntk_ode.tiles.kernel_to_disk`.
        starts: the tiles expected (default: those of the manifest's shape and tile).

    Returns:
        A :class:`Verification`.

    Raises:
        StoreError: no readable manifest (not a store).
    """
    from .batching import tile_starts

    folder = os.path.abspath(os.fspath(folder))
    manifest_path = safe_path(folder, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        manifest = check_payload(manifest, manifest_path)
        config = manifest["config"]
        names, shape, tile, dtype = list(config["get"]), tuple(config["shape"]), int(config["tile"]), config["dtype"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:  # ResumeError too
        raise StoreError(f"{manifest_path} is missing or damaged ({e}); {folder} cannot be verified") from e
    problems: list[str] = []
    damaged: set = set()
    try:
        markers = read_markers(folder)
    except StoreError as e:
        return Verification(False, (), (str(e),))
    # stores written before the manifest said so: symmetric when square with no tile below the diagonal
    symmetric = bool(manifest.get("symmetric", shape[0] == shape[1] and all(j >= i for i, j in markers)))
    if starts is None:
        starts = tile_starts(shape[0], shape[1], tile, symmetric)
    whole = manifest.get("checksums") or {}
    for n in names:
        path = os.path.join(folder, f"{n}.npy")
        arr, why = _open_array(path, shape, dtype)
        if arr is None:
            problems.append(str(why))
            damaged.update(starts)
            continue
        if n in whole and file_checksum(path) == whole[n] and all(s in markers for s in starts):
            continue  # finished and byte-identical: no need to look at tiles
        for i, j in starts:
            marker = markers.get((i, j))
            if marker is None:
                if n in whole:
                    problems.append(f"tile marker {marker_path(folder, i, j)} is missing")
                damaged.add((i, j))
                continue
            sums = marker.get("checksums", {})
            if n not in sums:
                problems.append(f"tile marker {marker_path(folder, i, j)} has no checksum of {n}")
                damaged.add((i, j))
                continue
            ok = tile_checksums({n: tile_region(arr, i, j, tile)})[n] == sums[n]
            if ok and symmetric and i != j:  # the mirrored copy below the diagonal
                ok = (
                    tile_checksums({n: tile_region(arr, i, j, tile).T})[n]
                    == tile_checksums({n: tile_region(arr, j, i, tile)})[n]
                )
            if not ok:
                problems.append(f"{path}: tile ({i}, {j}) differs from its checksum")
                damaged.add((i, j))
    return Verification(not problems and not damaged, tuple(sorted(damaged)), tuple(problems))
