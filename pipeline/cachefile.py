"""Safe file mechanics of a dataset cache: space, locking, validation.

Three failure modes of a memory-mapped cache are handled here, once, for
every array the cache writes or reads (:mod:`pipeline.cache` and
:mod:`pipeline.dataset` call these; :func:`write_json_atomic` writes its JSON files):

* **Disk full.** A write through a memory mapping into a file whose blocks
  are not allocated yet faults (SIGBUS) when the disk is full: the process
  dies with "Bus error" and no message. :func:`create_npy` therefore writes
  the ``.npy`` header through ordinary file I/O and then *allocates* the
  whole file (``os.posix_fallocate``; where the file system cannot, zeros are
  written through file I/O) before it is mapped, so a full disk raises
  ``OSError(ENOSPC)`` there, which :func:`disk_errors` turns into one
  :class:`~pipeline.errors.PipelineError` line naming the file, the bytes
  needed and the bytes free.
* **Two builds of one cache at once.** :class:`DirLock` takes an exclusive
  ``fcntl.flock`` on ``<dataset dir>/.lock``; a second process says that it
  waits (naming the holder's pid) and, once it holds the lock, finds the
  finished cache and reuses it. The kernel drops the lock when its holder
  dies, even by SIGKILL, so a stale lock never blocks.
* **Damaged files.** :func:`describe_files` records each array's size,
  shape, dtype and a SHA-256 of its ``.npy`` header (of the whole file for
  files up to ``FULL_HASH_BYTES``) in the manifest; :func:`check_files`
  compares the files with it when a cache is opened and raises
  :class:`DamagedCache` naming the first bad file. :func:`read_manifest`
  does the same for ``manifest.json`` itself. ``build_cache`` rebuilds a
  damaged cache instead of failing.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .errors import PipelineError

__all__ = ["DamagedCache", "CacheWriteError", "DirLock", "create_npy", "save_npy", "disk_errors", "format_bytes",
           "describe_files", "check_files", "read_manifest", "write_json_atomic", "ARRAY_FILES", "FULL_HASH_BYTES"]

#: the arrays of a cache (each with one row per kept track)
ARRAY_FILES = ("images.npy", "widths.npy", "keys.npy", "labels.npy", "split.npy", "ids.npy")
#: files up to this size get a SHA-256 of their whole content in the manifest (else of the header)
FULL_HASH_BYTES = 16 * 2 ** 20

_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DamagedCache(PipelineError):
    """A cache file is missing, truncated or not what its manifest says (the message names the file)."""

    show_layout = False  # the CLI prints the expected dataset layouts only for a wrong layout


class CacheWriteError(PipelineError):
    """A cache file could not be written (full disk, read-only file system); the message names it."""

    show_layout = False


def format_bytes(n) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free_bytes(path) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def space_message(path, exc: OSError, needed=None) -> str:
    """'cannot write PATH: No space left on device (needs 1.2 MiB, 0.3 MiB free)'."""
    what = exc.strerror or str(exc)
    if exc.errno in _SPACE_ERRNOS:
        free = _free_bytes(path)
        parts = []
        if needed is not None:
            parts.append(f"needs {format_bytes(needed)}")
        if free is not None:
            parts.append(f"{format_bytes(free)} free")
        if parts:
            what += f" ({', '.join(parts)})"
    return f"cannot write {os.fspath(path)}: {what}"


@contextlib.contextmanager
def disk_errors(path, needed=None):
    """Turn an ``OSError`` raised while writing ``path`` into a one-line PipelineError naming it.

    ``needed`` (bytes) is quoted for a full disk. Use around every write of
    a cache file (``np.save``, JSON, a memmap's creation).
    """
    try:
        yield
    except PipelineError:
        raise
    except OSError as exc:
        raise CacheWriteError(space_message(path, exc, needed) + "; finished work is kept, run the same "
                              "command again once there is room") from exc


def _allocate(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` for the file ``fd`` (posix_fallocate, else zeros written through file I/O)."""
    if nbytes <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1)):
                raise
    size = os.fstat(fd).st_size
    block = b"\0" * (1 << 20)
    os.lseek(fd, size, os.SEEK_SET)
    left = nbytes - size
    while left > 0:
        left -= os.write(fd, block[:min(left, len(block))])
    os.fsync(fd)


def create_npy(path, shape, dtype) -> np.memmap:
    """A new ``.npy`` file of ``shape``/``dtype``, its space allocated on disk, opened as a writable memmap.

    Writes through the returned mapping cannot hit a full disk (the blocks
    exist): an out-of-space condition raises here, as a PipelineError
    naming ``path`` and the bytes needed (the partial file is removed).

    Returns
    -------
    np.memmap [shape=shape, dtype=dtype], mode 'r+', zero-filled
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with disk_errors(path, needed=nbytes):
            with open(path, "wb") as f:
                npformat.write_array_header_1_0(f, header)
                offset = f.tell()
                f.flush()
                _allocate(f.fileno(), offset + nbytes)
    except PipelineError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return npformat.open_memmap(path, mode="r+")


def save_npy(path, arr) -> None:
    """``np.save`` with a full disk reported as a PipelineError naming ``path``."""
    arr = np.asarray(arr)
    with disk_errors(path, needed=arr.nbytes):
        np.save(path, arr)


# ---------------------------------------------------------------- locking


class DirLock:
    """Exclusive lock on a dataset directory (``fcntl.flock`` on ``<dir>/.lock``), as a context manager.

    A second holder waits, after printing one line (``log``) that names the
    holder's pid. Where the lock file cannot be created (a read-only cache,
    a platform without ``fcntl``) the block runs unlocked: nothing can be
    built there anyway, and reading needs no lock.
    """

    def __init__(self, directory, log=None, what="preprocess"):
        self.dir = Path(directory)
        self.path = self.dir / ".lock"
        self.log = log if log is not None else (lambda m: print(m, file=sys.stderr))
        self.what = what
        self._f = None
        self.waited = False

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError:
            return self
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            self.log(f"waiting: another {self.what} (pid {holder}) is building {self.dir}; "
                     f"its result is reused when it finishes")
            self.waited = True
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:  # flock unsupported on this file system
            f.close()
            return self
        with contextlib.suppress(OSError):
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
        self._f = f
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            self._f.close()  # closing the descriptor releases the flock
            self._f = None
        return False


# ---------------------------------------------------------------- validation


def _npy_header(path: Path):
    """(shape, dtype, header bytes, data offset) of a .npy file; DamagedCache naming it when unreadable."""
    try:
        with open(path, "rb") as f:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            offset = f.tell()
            f.seek(0)
            head = f.read(offset)
    except FileNotFoundError:
        raise DamagedCache(f"{path} is missing") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DamagedCache(f"{path} is not a NumPy .npy array (damaged header: {exc})") from exc
    if dtype.hasobject:
        raise DamagedCache(f"{path} holds Python objects, not a cache array")
    return tuple(shape), dtype, head, offset


def _sha256(path: Path, limit=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if limit is not None:
            h.update(f.read(limit))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def describe_files(directory, names=ARRAY_FILES) -> dict:
    """``{name: {bytes, shape, dtype, header_sha256[, sha256]}}`` of the cache's ``.npy`` files (for the manifest)."""
    d = Path(directory)
    out = {}
    for name in names:
        p = d / name
        shape, dtype, head, offset = _npy_header(p)
        rec = {"bytes": p.stat().st_size, "shape": list(shape), "dtype": dtype.str,
               "header_sha256": hashlib.sha256(head).hexdigest()}
        if rec["bytes"] <= FULL_HASH_BYTES:
            rec["sha256"] = _sha256(p)
        out[name] = rec
    return out


def check_files(directory, manifest: dict, names=None) -> None:
    """Check the cache's arrays against ``manifest`` (sizes, shapes, dtypes, checksums).

    With a ``files`` entry (written by :func:`describe_files`) every recorded
    field must match; an older manifest without one is checked for complete
    files whose first dimension is ``n_images``. ``names`` restricts the
    check to those files (default: the manifest's, else :data:`ARRAY_FILES`).

    Raises
    ------
    DamagedCache
        Naming the first bad file and what is wrong with it.
    """
    d = Path(directory)
    files = manifest.get("files")
    if names is None:
        names = list(files) if isinstance(files, dict) and files else list(ARRAY_FILES)
    n = manifest.get("n_images")
    for name in names:
        p = d / name
        shape, dtype, head, offset = _npy_header(p)
        size = p.stat().st_size
        want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != want:
            raise DamagedCache(f"{p} is truncated or padded: {size} bytes, its header {shape} {dtype} "
                               f"needs {want}")
        rec = files.get(name) if isinstance(files, dict) else None
        if rec is None:
            if n is not None and (len(shape) == 0 or shape[0] != n):
                raise DamagedCache(f"{p} has shape {shape}, the manifest says {n} images")
            continue
        if list(shape) != list(rec.get("shape", shape)) or dtype.str != rec.get("dtype", dtype.str):
            raise DamagedCache(f"{p} holds {shape} {dtype.str}, the manifest says "
                               f"{tuple(rec.get('shape'))} {rec.get('dtype')}")
        if size != rec.get("bytes", size):
            raise DamagedCache(f"{p} is {size} bytes, the manifest says {rec['bytes']}")
        if hashlib.sha256(head).hexdigest() != rec.get("header_sha256", hashlib.sha256(head).hexdigest()):
            raise DamagedCache(f"{p}: header checksum differs from the manifest's")
        if "sha256" in rec and _sha256(p) != rec["sha256"]:
            raise DamagedCache(f"{p}: content checksum differs from the manifest's")


def read_manifest(path) -> dict:
    """``manifest.json`` as a dict; DamagedCache naming the file when it is unreadable or not an object."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCache(f"{path} is damaged ({type(exc).__name__}: {exc})") from exc
    if not isinstance(man, dict) or "param_hash" not in man:
        raise DamagedCache(f"{path} is damaged (not a hitcnn dataset manifest)")
    return man


def discard(directory, names=ARRAY_FILES + ("manifest.json",)) -> None:
    """Remove a damaged cache's files (the manifest first), so that it is rebuilt."""
    d = Path(directory)
    for name in ("manifest.json",) + tuple(n for n in names if n != "manifest.json"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON into ``path``: a temporary file, fsync, ``os.replace`` (a full disk: :class:`CacheWriteError`)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with disk_errors(path):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
