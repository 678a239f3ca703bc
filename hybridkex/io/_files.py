"""Files that hold secrets or state: created 0600, replaced atomically, read with checks.

A key or state file is never observable half-written: we write a temporary file in the
same directory (O_EXCL, mode 0600), fsync it, rename it over the target, and fsync the
directory, so a crash leaves either the old or the new content.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .._errors import ConfigError

__all__ = ["atomic_write", "read_secret_file", "locked", "check_not_world_readable"]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    With ``overwrite=False`` an existing file is an error (checked, then guaranteed by
    ``link`` so two writers cannot both win).
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not overwrite and target.exists():
        raise ConfigError(f"{target} already exists; remove it or pass --force to overwrite")
    tmp = directory / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        if not directory.is_dir():  # checked only now: a daemon writes key files many times a second
            raise ConfigError(f"cannot write {target}: directory {directory} does not exist; create it first") \
                from None
        raise ConfigError(f"cannot write {target}: {exc.strerror}; check the directory's permissions") from None
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or widened it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ConfigError(f"{target} already exists; remove it or pass --force to overwrite") from None
            finally:
                os.unlink(tmp)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_not_world_readable(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a secret file that group or others can read (as ssh does for private keys)."""
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod 600 {path}'")


def read_secret_file(path: str | os.PathLike[str], what: str, *, max_size: int = 1 << 20) -> bytes:
    """Read a secret file, refusing missing, oversized, or group/world-accessible files."""
    try:
        check_not_world_readable(path, what)
        with open(path, "rb") as fh:
            data = fh.read(max_size + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory; give the file inside it") from None
    except PermissionError:
        raise ConfigError(f"cannot read {what} {path}: permission denied") from None
    if len(data) > max_size:
        raise ConfigError(f"{what} {path} is larger than {max_size} bytes; is it the right file?")
    return data


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``.lock for read-modify-write of a state file."""
    lock_path = f"{os.fspath(path)}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


KEY_FORMATS = ("raw", "hex", "base64")


def encode_key(key: bytes, fmt: str) -> bytes:
    """Key file content: raw bytes, or hex/base64 text with a newline (base64 is what ``wg`` reads)."""
    if fmt == "raw":
        return key
    if fmt == "hex":
        return key.hex().encode() + b"\n"
    if fmt == "base64":
        import base64

        return base64.b64encode(key) + b"\n"
    raise ValueError(f"unknown key format {fmt!r}; choose one of {KEY_FORMATS}")


def write_key_file(path: str | os.PathLike[str], key: bytes, fmt: str = "raw") -> None:
    """Write a derived key atomically with mode 0600."""
    atomic_write(path, encode_key(key, fmt), mode=0o600)
