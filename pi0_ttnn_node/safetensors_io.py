"""Safe reading of weight files: safetensors only, checked before a single tensor is read.

Pickle-based formats (`.bin/.pt/.pth/.ckpt/.pkl`, torch's zip archives) run arbitrary code when
loaded, so they are refused by name and by their first bytes; nothing here calls torch.load or
pickle. A safetensors file is an 8-byte little-endian header length, a JSON header, then the data.
Tensors are read with plain file reads into owned memory, not mmap: a checkpoint replaced in place
while the node runs must not crash it with SIGBUS. Used by checkpoint.py and normalization.py.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from pi0_ttnn_node.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                "BF16": torch.bfloat16}
READ_CHUNK_BYTES = 64 << 20
CONVERT_HINT = ("convert it once, in a sandbox you trust, with safetensors.torch.save_file("
                "torch.load(path, weights_only=True), 'model.safetensors') and point the node at "
                "the result")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as described by a safetensors header (nothing read yet)."""

    dtype: str
    shape: Tuple[int, ...]
    offset: int  # absolute position of the first byte in the file
    nbytes: int


def refuse_pickle_name(path: Path) -> None:
    """Raise for file names of pickle-based formats, before opening them."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        msg = (f"refusing {path}: {path.suffix} files are Python pickles, and loading a pickle "
               "executes code from the file; only safetensors is accepted. To use it, "
               + CONVERT_HINT)
        raise CheckpointError(msg)


def _describe_magic(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format, which contains a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a Python pickle (protocol {head[1]})"
    return ""


def read_header(path: "str | Path") -> Dict[str, TensorInfo]:
    """Validate a safetensors file's framing and header; return its tensors by name.

    Checks: regular file, not a pickle/zip by name or magic bytes, header length within the file,
    header is a JSON object, every tensor has a float dtype and consistent offsets, and the data
    section ends exactly at the end of the file (so truncated downloads are caught here).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weight file {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"weight file {p} is not a regular file")
    refuse_pickle_name(p)
    size = p.stat().st_size
    with p.open("rb") as fh:
        head = fh.read(8)
        kind = _describe_magic(head)
        if kind:
            msg = (f"refusing {p}: its bytes show {kind}, not safetensors; loading it would "
                   f"execute code from the file. To use it, {CONVERT_HINT}")
            raise CheckpointError(msg)
        if size < 10:
            msg = (f"{p} is {size} bytes, too small for a safetensors file (8-byte length + JSON "
                   "header); the file is empty or truncated, download it again")
            raise CheckpointError(msg)
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            msg = (f"{p} is not a valid safetensors file: header length {header_len} does not fit "
                   f"in a {size}-byte file; the file is truncated or not safetensors")
            raise CheckpointError(msg)
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        msg = f"{p} has a corrupt safetensors header ({err}); download or convert the file again"
        raise CheckpointError(msg) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{p} has a corrupt safetensors header: not a JSON object")
    return _parse_entries(p, header, 8 + header_len, size - 8 - header_len)


def _parse_entries(p: Path, header: dict, base: int, data_size: int) -> Dict[str, TensorInfo]:
    infos: Dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            start, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            msg = f"{p} has a corrupt safetensors header entry for {name!r}: {err}"
            raise CheckpointError(msg) from err
        if dtype not in TORCH_DTYPES:
            msg = (f"{p}: tensor {name!r} has dtype {dtype}; model weights and statistics must be "
                   f"floating point ({', '.join(TORCH_DTYPES)})")
            raise CheckpointError(msg)
        if not 0 <= start <= end or end > data_size:
            msg = (f"{p}: tensor {name!r} spans bytes [{start}, {end}) but the data section has "
                   f"{data_size} bytes; the file is truncated, download it again")
            raise CheckpointError(msg)
        itemsize = torch.empty((), dtype=TORCH_DTYPES[dtype]).element_size()
        if any(d < 0 for d in shape) or math.prod(shape) * itemsize != end - start:
            msg = (f"{p}: tensor {name!r} of shape {list(shape)} and dtype {dtype} does not fill "
                   f"its {end - start} bytes; the header is corrupt")
            raise CheckpointError(msg)
        infos[name] = TensorInfo(dtype=dtype, shape=shape, offset=base + start, nbytes=end - start)
        end_max = max(end_max, end)
    if end_max != data_size:
        msg = (f"{p}: the header describes {end_max} data bytes but the file holds {data_size}; "
               "the file is damaged, download or convert it again")
        raise CheckpointError(msg)
    return infos


def read_tensor(fh: BinaryIO, info: TensorInfo, path: Path,
                on_bytes: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Read one tensor described by `info` from an open file into a new CPU tensor."""
    raw = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(raw.numpy())
    fh.seek(info.offset)
    done = 0
    while done < info.nbytes:
        n = fh.readinto(view[done:done + READ_CHUNK_BYTES])
        if not n:
            msg = (f"{path} ended after {info.offset + done} bytes while reading a tensor; the "
                   "file was truncated or replaced while loading")
            raise CheckpointError(msg)
        done += n
        if on_bytes is not None:
            on_bytes(n)
    return raw.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)


def load_small_file(path: "str | Path") -> Dict[str, np.ndarray]:
    """Read every tensor of a small safetensors file (statistics) as float32 numpy arrays."""
    p = Path(path)
    infos = read_header(p)
    with p.open("rb", buffering=0) as fh:
        return {k: read_tensor(fh, info, p).float().numpy() for k, info in infos.items()}
