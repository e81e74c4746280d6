"""Checks before reading a small file a parameter or checkpoint names: exists, regular, bounded.

A path from a parameter can point at a FIFO, a device (/dev/zero), a directory or a multi-gigabyte
file; reading such a thing blocks or exhausts memory. Metadata files (config.json, processor and
statistics JSON, index files) are refused above 16 MB. Weight files have their own framing checks
in safetensors_io.py. Counterparts: config.py, checkpoint.py, normalization.py, tokenizer.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Type

from pi0_ttnn_node.errors import Pi0Error

MAX_METADATA_BYTES = 16 * 2**20


def check_regular_file(path: "str | Path", max_bytes: int, what: str,
                       error: Type[Pi0Error]) -> Path:
    """Return `path` when it is an existing regular file of 1..max_bytes bytes; raise `error`."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    if not p.is_file():
        raise error(f"{what} {p} is not a regular file (a directory, device or pipe); point "
                    "the parameter at the file itself")
    size = p.stat().st_size
    if not 0 < size <= max_bytes:
        raise error(f"{what} {p} has {size} bytes; expected 1 to {max_bytes}. Is it the right "
                    "file?")
    return p


def read_small_text(path: "str | Path", what: str, error: Type[Pi0Error],
                    max_bytes: int = MAX_METADATA_BYTES) -> str:
    """Read a UTF-8 metadata file after check_regular_file; decoding errors raise `error`."""
    p = check_regular_file(path, max_bytes, what, error)
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as err:
        raise error(f"cannot read {what} {p}: {err}") from err
    if len(raw) > max_bytes:
        raise error(f"{what} {p} grew beyond {max_bytes} bytes while being read")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {p} is not UTF-8 text: {err}") from err
