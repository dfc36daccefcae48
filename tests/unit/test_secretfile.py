"""Secret files: created private and whole, refused when open to others or empty."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.secretfile import (
    MAX_SECRET_BYTES,
    SecretFileError,
    check_secret_file,
    create_secret_file,
    read_secret_file,
)


def test_create_makes_a_private_file_and_directory_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "new" / "secret"
    assert create_secret_file(path, b"first\n") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert create_secret_file(path, b"second\n") is False
    assert path.read_bytes() == b"first\n"
    assert os.listdir(path.parent) == ["secret"]  # no temporary file left behind
    assert read_secret_file(path) == b"first\n"


@pytest.mark.parametrize(("mode", "words"), [
    (0o644, "has mode 0644: must not be readable by others; chmod 600"),
    (0o640, "has mode 0640: must not be readable by group; chmod 600"),
    (0o602, "has mode 0602: must not be accessible by others; chmod 600"),
])
def test_a_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int, words: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret-value\n")
    path.chmod(mode)
    for check in (check_secret_file, read_secret_file):
        with pytest.raises(SecretFileError) as err:
            check(path)
        assert words in str(err.value) and str(path) in str(err.value)
        assert "s3cret-value" not in str(err.value)
    path.chmod(0o400)
    assert read_secret_file(path) == b"s3cret-value\n"


@pytest.mark.parametrize("content", [b"", b"\n", b" \r\n\t"])
def test_an_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(SecretFileError) as err:
        read_secret_file(path)
    assert str(err.value) == f"{path} is empty" and err.value.problem == "is empty"
    if not content:
        with pytest.raises(SecretFileError, match="is empty"):
            check_secret_file(path)


def test_what_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret_file(fifo)  # and does not block waiting for a writer
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    big.chmod(0o600)
    with pytest.raises(SecretFileError, match="larger than"):
        read_secret_file(big)
    with pytest.raises(FileNotFoundError):
        read_secret_file(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        check_secret_file(tmp_path / "missing")
