"""Key files (p2pay.keys): creation, loading and every refusal."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.keys import KeyFileError, create_key, load_key, load_or_create_key

ALICE_SEED = bytes([1]) * 32

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_key_file_error_is_a_local_protocol_error() -> None:
    assert issubclass(KeyFileError, LocalProtocolError)


def test_create_key_writes_0600_hex_line(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = create_key(path)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    content = path.read_bytes()
    assert len(content) == 65 and content.endswith(b"\n")
    assert bytes.fromhex(content[:-1].decode()) == key.seed
    assert load_key(path) == key
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


def test_create_key_is_random(tmp_path: Path) -> None:
    assert create_key(tmp_path / "a").seed != create_key(tmp_path / "b").seed


def test_create_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path / "node.key", ALICE_SEED.hex().encode() + b"\n")
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path)
    assert path.read_bytes() == ALICE_SEED.hex().encode() + b"\n"


def test_create_key_refuses_to_overwrite_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "node.key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(link)
    assert not (tmp_path / "elsewhere").exists()


def test_create_key_makes_private_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "node.key"
    create_key(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_create_key_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "node.key"
        create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_key_fixed_seed(tmp_path: Path) -> None:
    path = write(tmp_path / "alice.key", ALICE_SEED.hex().encode() + b"\n")
    assert load_key(path) == Keypair.from_seed(ALICE_SEED)
    assert load_key(str(path)).public == Keypair.from_seed(ALICE_SEED).public


def test_load_key_accepts_upper_case_and_no_newline(tmp_path: Path) -> None:
    seed = bytes(range(32))
    path = write(tmp_path / "k", seed.hex().upper().encode())
    assert load_key(path).seed == seed


def test_load_key_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "nope")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o660, 0o700 | 0o004])
def test_load_key_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "k", ALICE_SEED.hex().encode() + b"\n", mode)
    with pytest.raises(KeyFileError, match="group or others"):
        load_key(path)


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_load_key_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "k", ALICE_SEED.hex().encode() + b"\n", mode)
    assert load_key(path).seed == ALICE_SEED


def test_load_key_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(directory)


def test_load_key_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(fifo)


def test_load_key_checks_the_symlink_target(tmp_path: Path) -> None:
    target = write(tmp_path / "real", ALICE_SEED.hex().encode() + b"\n", 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="group or others"):
        load_key(link)
    os.chmod(target, 0o600)
    assert load_key(link).seed == ALICE_SEED


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        ALICE_SEED,  # raw 32 bytes: not the format
        ALICE_SEED.hex().encode()[:-2] + b"\n",  # 31 bytes
        ALICE_SEED.hex().encode() + b"00\n",  # 33 bytes
        ALICE_SEED.hex().encode() + b"\n\n",
        ALICE_SEED.hex().encode() + b" ",
        b" " + ALICE_SEED.hex().encode(),
        b"0x" + ALICE_SEED.hex().encode()[:-2],
        b"g" * 64 + b"\n",
        ALICE_SEED.hex().encode()[:-1] + b"\xff\n",
        ALICE_SEED.hex().encode() + b"\r",
    ],
)
def test_load_key_refuses_wrong_size_or_format(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "k", content)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    # The message never carries the (possibly secret) content.
    assert ALICE_SEED.hex() not in str(info.value)
    assert ALICE_SEED.hex()[:20] not in str(info.value)


def test_load_or_create_creates_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == first


def test_load_or_create_refuses_an_unsafe_existing_file(tmp_path: Path) -> None:
    path = write(tmp_path / "node.key", ALICE_SEED.hex().encode() + b"\n", 0o644)
    with pytest.raises(KeyFileError, match="group or others"):
        load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # left alone, not "fixed"


def test_load_or_create_does_not_replace_a_malformed_file(tmp_path: Path) -> None:
    path = write(tmp_path / "node.key", b"garbage")
    with pytest.raises(KeyFileError, match=r"bytes|malformed"):
        load_or_create_key(path)
    assert path.read_bytes() == b"garbage"


def test_load_or_create_dangling_symlink_is_an_error(tmp_path: Path) -> None:
    link = tmp_path / "node.key"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(KeyFileError):
        load_or_create_key(link)
    assert not (tmp_path / "missing").exists()
