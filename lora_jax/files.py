"""Writing files so that a crash never leaves a half-written one behind, and checking before a
long run that its directory can take what the run will write."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PROBE_NAME = ".lora_jax_probe.tmp"
# Every directory lora_jax writes whole (a merged model, a PEFT export, a compare) carries this
# manifest: what it is and which files are its own, so that --overwrite can tell a directory it
# wrote from one the user has, and never deletes a file it did not write.
MANIFEST = "lora_jax.json"
MANIFEST_FORMAT = "lora_jax-output/1"
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what tempfile.mkstemp names in atomic_write
_CHUNK = 1 << 20


class RunDirError(OSError):
    """An output directory that cannot be created, written, or hold what a run will write; the
    message names the directory (and the bytes needed)."""


class OutputExistsError(RunDirError):
    """An output path that holds what the user has (or what the command reads): refused before
    anything is written. The message names the path and, where it helps, the flag."""


def atomic_write(dest: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``dest``, flush it to disk, then
    rename it over ``dest`` (atomic on POSIX). On any failure the temporary file is removed and
    ``dest`` keeps its previous content; a process killed at any moment leaves ``dest`` either
    old or new, never partial (at worst a stray ``.<name>.*.tmp``, see ``remove_stale_temps``)."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600, and writers such as safetensors' save_file replace the file with
        # a new one of their own mode: set the mode a new file gets under the umask, after
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)  # make the rename itself durable (power loss, not only kill -9)
    return dest


def atomic_write_dir(dest: str | os.PathLike, write: Callable[[Path], object], *, kind: str,
                     overwrite: bool = False, reads: dict[str, Path] | None = None,
                     info: dict | None = None) -> Path:
    """``atomic_write`` for a directory: fill a temporary directory beside ``dest`` with
    ``write(tmp)``, add the manifest (``MANIFEST``: ``kind``, the files, ``info``), fsync, then
    rename it to ``dest``. A reader sees the old directory or the complete new one, never a
    partial one. What may be replaced is decided by ``check_output_dir`` first."""
    dest = Path(dest)
    replace = check_output_dir(dest, kind, overwrite=overwrite, reads=reads)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old = None
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"format": MANIFEST_FORMAT, "kind": kind, "files": files, **(info or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            f.chmod(mode)  # what a new file gets under the umask, whatever the writer did
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual directory mode
        if replace:
            old = dest.with_name(f".{dest.name}.{tmp.name}.old")
            os.replace(dest, old)
        os.replace(tmp, dest)  # over a new path, or an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)
    return dest


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest lora_jax wrote into ``directory`` (a dict with ``kind`` and ``files``), or
    None when there is none or it is not one of ours."""
    try:
        value = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(value, dict) and value.get("format") == MANIFEST_FORMAT
          and isinstance(value.get("kind"), str) and isinstance(value.get("files"), list))
    return value if ok else None


def check_output_dir(dest: str | os.PathLike, kind: str, *, overwrite: bool = False,
                     reads: dict[str, Path] | None = None, flag: str = "--overwrite") -> bool:
    """May a ``kind`` directory be written at ``dest``? True when an old one will be replaced.

    Allowed: a new path or an empty directory; with ``overwrite``, a directory that lora_jax
    wrote as the same ``kind`` (its manifest says so) and that holds nothing its manifest does
    not list. Never: a path that is, or contains, a directory the command reads (``reads``:
    what it is -> path, e.g. ``{"the base model": ...}``), whatever the flag. Every refusal is
    an ``OutputExistsError`` naming ``dest`` (and ``flag`` where it would help); nothing has
    been written then.
    """
    dest = Path(dest)
    for what, path in (reads or {}).items():
        if _same_or_inside(Path(path), dest):
            where = "is" if _same(Path(path), dest) else "contains"
            raise OutputExistsError(f"{dest}: {where} the directory of {what} this command "
                                    f"reads ({path}); write to another directory")
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise OutputExistsError(f"{dest}: exists and is not a directory; choose another output "
                                "directory")
    present = sorted(p.name for p in dest.iterdir())
    if not present:
        return False
    manifest = read_manifest(dest)
    if manifest is None or manifest["kind"] != kind:
        what = (f"a {manifest['kind']} that lora_jax wrote" if manifest
                else f"files lora_jax did not write ({_listing(present)})")
        raise OutputExistsError(f"{dest}: exists and holds {what}; {flag} replaces only a "
                                f"{kind} directory that lora_jax wrote, so choose a new or "
                                "empty directory")
    if not overwrite:
        raise OutputExistsError(f"{dest}: already holds a {kind} ({_listing(present)}); give "
                                f"{flag} to replace it, or choose another directory")
    others = sorted(set(present) - set(manifest["files"]) - {MANIFEST})
    if others:
        raise OutputExistsError(f"{dest}: holds files besides the {kind} lora_jax wrote "
                                f"({_listing(others)}); replacing it would delete them, so move "
                                "them or choose another directory")
    return True


def check_output_file(dest: str | os.PathLike, *, overwrite: bool = False,
                      reads: dict[str, Path] | None = None, flag: str = "--overwrite") -> None:
    """May a file be written at ``dest``? A new path, or (with ``overwrite``) an existing file;
    never a file inside a directory the command reads (``reads``, as ``check_output_dir``)."""
    dest = Path(dest)
    for what, path in (reads or {}).items():
        if _same(Path(path), dest.parent):
            raise OutputExistsError(f"{dest}: is inside the directory of {what} this command "
                                    f"reads ({path}); write it somewhere else")
    if dest.is_dir():
        raise OutputExistsError(f"{dest}: is a directory; give the path of a file to write")
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest}: exists; give {flag} to replace it, or choose another "
                                "file name")


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _same_or_inside(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies somewhere below it (paths resolved, links followed)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _listing(names: list[str], limit: int = 5) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` (``.<name>.<8 random>.tmp``) or
    probe left in ``directory``; other files are left alone."""
    stale = [p for p in Path(directory).glob(".*.tmp") if is_stale_temp(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_stale_temp(path: Path) -> bool:
    """A temporary file of ``atomic_write`` or of a probe (left behind only by a kill)."""
    return path.is_file() and (path.name == PROBE_NAME or bool(_TEMP.fullmatch(path.name)))


def write_manifest(directory: str | os.PathLike, kind: str, files: list[str],
                   info: dict | None = None) -> Path:
    """Mark ``directory`` as a ``kind`` that lora_jax writes, owning ``files`` (for a directory
    filled step by step, such as a comparison; ``atomic_write_dir`` writes its own)."""
    manifest = {"format": MANIFEST_FORMAT, "kind": kind, "files": sorted(files), **(info or {})}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return atomic_write(Path(directory) / MANIFEST, lambda tmp: Path(tmp).write_text(text))


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
