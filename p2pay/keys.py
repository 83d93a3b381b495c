"""Key files: where a peer's Ed25519 seed lives on disk (specs/keys.md, the normative format).

Format
------
One line: the 32-byte seed as 64 lowercase hex digits, followed by a newline
(``0123...ef\\n``). Hex rather than raw bytes so the file survives copy and paste and
a truncated or mangled file is detected rather than silently used. Upper-case digits
and a missing final newline are accepted on reading; nothing else is (no spaces, no
comments, no ``0x``).

Safety rules
------------
* A key file is created with mode 0600, written to a temporary file in the same
  directory, fsynced, and then linked into place, which fails if the name already
  exists: a key is never overwritten, and a crash never leaves a half-written key
  under the final name. The directory is fsynced afterwards.
* Loading refuses a file that group or others can read or write, that is not a
  regular file (after following symlinks), or whose size or content is wrong. The
  checks are made on the opened file descriptor, so the file checked is the file read.
* The seed never appears in an exception message or a log.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair

__all__ = ["KEY_FILE_MODE", "KeyFileError", "create_key", "load_key", "load_or_create_key"]

KEY_FILE_MODE = 0o600
_SEED_SIZE = 32
_HEX_SIZE = 2 * _SEED_SIZE
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class KeyFileError(LocalProtocolError):
    """A key file is missing, unsafe, malformed, or would be overwritten."""


def load_key(path: str | os.PathLike[str]) -> Keypair:
    """Read a key file.

    Args:
        path: the key file.

    Returns:
        The key pair made from the seed in the file.

    Raises:
        KeyFileError: the file does not exist or cannot be read, is not a regular file,
            is readable or writable by group or others, or does not hold exactly one
            hex seed.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        if info.st_size not in (_HEX_SIZE, _HEX_SIZE + 1):
            raise KeyFileError(
                f"key file {path} has {info.st_size} bytes; expected {_HEX_SIZE} hex digits "
                "and a newline"
            )
        data = _read_at_most(fd, _HEX_SIZE + 2)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return Keypair.from_seed(_parse(data, path))


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        chunk = os.read(fd, limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _parse(data: bytes, path: Path) -> bytes:
    text = data[:-1] if data.endswith(b"\n") else data
    if len(text) != _HEX_SIZE or not _HEX_DIGITS.issuperset(text):
        # Never echo the content: it is (or is close to) a secret.
        raise KeyFileError(
            f"key file {path} is malformed: expected one line of {_HEX_SIZE} hex digits"
        )
    try:
        return binascii.unhexlify(text)
    except binascii.Error:  # pragma: no cover - excluded by the digit check
        raise KeyFileError(f"key file {path} is malformed") from None


def create_key(path: str | os.PathLike[str]) -> Keypair:
    """Create a new random key file; never overwrite an existing one.

    Missing parent directories are created with mode 0700.

    Args:
        path: where to write the key file.

    Returns:
        The new key pair.

    Raises:
        KeyFileError: `path` already exists, or the file cannot be written.
    """
    path = Path(path)
    seed = secrets.token_bytes(_SEED_SIZE)
    content = binascii.hexlify(seed) + b"\n"
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {directory}: {exc.strerror}") from None
    if os.path.lexists(path):
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite it")
    try:
        # mkstemp creates the file with mode 0600 and O_EXCL.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise KeyFileError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_no_replace(tmp_name, path)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    _fsync_dir(directory)
    return Keypair.from_seed(seed)


def _link_no_replace(source: str, target: Path) -> None:
    """Give `source` the name `target`; fail if `target` exists (a no-overwrite rename)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise KeyFileError(f"key file {target} already exists; refusing to overwrite it") from None
    except OSError:
        # Filesystems without hard links: check, then rename (a small race remains).
        if os.path.lexists(target):
            raise KeyFileError(
                f"key file {target} already exists; refusing to overwrite it"
            ) from None
        os.rename(source, target)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def load_or_create_key(path: str | os.PathLike[str]) -> Keypair:
    """Load the key file at `path`, creating a new random key there if there is none.

    Args:
        path: the key file.

    Returns:
        The key pair.

    Raises:
        KeyFileError: the file exists but is unsafe or malformed, or cannot be created.
    """
    path = Path(path)
    if not os.path.lexists(path):
        try:
            return create_key(path)
        except KeyFileError:
            if not os.path.lexists(path):
                raise
            # Another process created it in the meantime: use theirs.
    return load_key(path)
