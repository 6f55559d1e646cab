"""Writing files so that a crash never leaves a half-written one behind, and checking before a
long run that its directory can take what the run will write."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PROBE_NAME = ".lora_jax_probe.tmp"
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what tempfile.mkstemp names in atomic_write
_CHUNK = 1 << 20


class RunDirError(OSError):
    """An output directory that cannot be created, written, or hold what a run will write; the
    message names the directory (and the bytes needed)."""


def atomic_write(dest: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``dest``, flush it to disk, then
    rename it over ``dest`` (atomic on POSIX). On any failure the temporary file is removed and
    ``dest`` keeps its previous content; a process killed at any moment leaves ``dest`` either
    old or new, never partial (at worst a stray ``.<name>.*.tmp``, see ``remove_stale_temps``)."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)  # make the rename itself durable (power loss, not only kill -9)
    return dest


def atomic_write_dir(dest: str | os.PathLike, write: Callable[[Path], object], *,
                     allowed: tuple[str, ...]) -> Path:
    """``atomic_write`` for a directory: fill a temporary directory beside ``dest`` with
    ``write(tmp)``, fsync its files, then rename it to ``dest``. A reader sees the old directory
    or the complete new one, never a partial one. An existing ``dest`` is replaced only when it
    holds nothing but files named in ``allowed`` (so a mistyped --out never deletes other work).
    """
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise ValueError(f"{dest}: exists and is not a directory")
        others = sorted(p.name for p in dest.iterdir() if p.name not in allowed)
        if others:
            raise ValueError(f"{dest}: exists and holds other files ({others[:5]}); "
                             "choose another output directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old = None
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual directory mode
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{tmp.name}.old")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)
    return dest


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` (``.<name>.<8 random>.tmp``) or
    probe left in ``directory``; other files are left alone."""
    stale = [p for p in Path(directory).glob(".*.tmp")
             if p.is_file() and (p.name == PROBE_NAME or _TEMP.fullmatch(p.name))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and write a small file in it, so that an unwritable
    output directory fails now, not when the first checkpoint is due."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{directory}: cannot create the run directory "
                          f"({e.strerror or e})") from None
    _probe(directory, 1)
    return directory


def check_space(directory: str | os.PathLike, need: int, probe: int, what: str) -> None:
    """Fail unless ``directory`` has ``need`` bytes free and takes a ``probe``-byte file.

    ``shutil.disk_usage`` alone can be wrong (quotas, reserved blocks, network file systems),
    so the probe is really written (``posix_fallocate`` where the file system has it, else
    zeros) and removed. ``what`` says what the bytes are for, for the message.
    """
    directory = Path(directory)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise RunDirError(f"{directory}: {free:,} bytes free, but this run needs about "
                          f"{need:,} ({what}); free some space or choose another directory")
    _probe(directory, probe, need=need, what=what)


def _probe(directory: Path, nbytes: int, *, need: int | None = None, what: str = "") -> None:
    path = directory / PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise RunDirError(f"{directory}: cannot write in the run directory "
                          f"({e.strerror or e})") from None
    try:
        _fill(fd, nbytes)
        os.fsync(fd)
    except OSError as e:
        needed = f"; this run needs about {need:,} bytes ({what})" if need else ""
        raise RunDirError(f"{directory}: writing a {nbytes:,}-byte test file failed "
                          f"({e.strerror or e}){needed}") from None
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _fill(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` for real: allocate the blocks (fast), or write zeros where the file
    system cannot allocate."""
    os.write(fd, b"\0" * min(nbytes, _CHUNK))  # always write something through the real path
    if nbytes <= _CHUNK:
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass
    zeros = b"\0" * _CHUNK
    written = _CHUNK
    while written < nbytes:
        written += os.write(fd, zeros[: nbytes - written])


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
