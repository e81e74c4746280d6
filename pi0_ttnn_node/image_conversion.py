"""sensor_msgs/Image and CompressedImage payloads to RGB uint8 arrays, without cv_bridge.

Raw images are read with one np.frombuffer honouring `step` (no per-pixel Python); compressed ones
go through cv2.imdecode after their header size is checked, so a huge image costs microseconds to
refuse. Default limit: 4096*4096 pixels (8K, 7680x4320, is refused). With the model's image size
given, decoders resize with pad before the colour conversion, so the full-size frame is never
converted or copied. ROS counterpart: the node's image callbacks; preprocessing.py scales to
[-1, 1] (and resizes frames that arrive at another size).
"""
from __future__ import annotations

import logging
import struct
from typing import Callable, Optional, Tuple, Union

import cv2
import numpy as np

from pi0_ttnn_node.errors import ObservationRejected

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 4096 * 4096
# encoding -> (channels, cv2 conversion to RGB or None when the bytes already are RGB)
RAW_ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MAX_SEGMENTS = 512

# anything with the buffer protocol: bytes, memoryview, array.array (rclpy uint8[]), ndarray
Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


class ImageRejected(ObservationRejected):
    """An image message cannot be converted; `reason` is one of the keys documented per function."""


def _nbytes(data: Buffer) -> int:
    return memoryview(data).nbytes


def check_raw_image(encoding: str, height: int, width: int, step: int, nbytes: int,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Validate raw image metadata without touching the pixels; return the channel count.

    Reasons: unsupported_encoding, zero_size, image_too_large, bad_step, data_too_short,
    data_too_long. Trailing bytes are refused too: a publisher that pads beyond step*height is
    sending a layout we cannot verify.
    """
    if encoding not in RAW_ENCODINGS:
        msg = (f"encoding '{encoding}' is not supported; expected one of {sorted(RAW_ENCODINGS)}; "
               "publish 8-bit colour or mono (depth, 16-bit, float, Bayer and YUV are refused)")
        raise ImageRejected("unsupported_encoding", msg)
    channels = RAW_ENCODINGS[encoding][0]
    if height <= 0 or width <= 0:
        raise ImageRejected("zero_size", f"image is {width}x{height}; expected a positive size")
    if height * width > max_pixels:
        msg = f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        raise ImageRejected("image_too_large", msg)
    if step < width * channels:
        msg = f"step {step} < width*channels = {width}*{channels}; the row layout is broken"
        raise ImageRejected("bad_step", msg)
    expected = step * height
    if nbytes < expected:
        raise ImageRejected("data_too_short", f"data has {nbytes} bytes; step*height = {expected}")
    if nbytes > expected:
        raise ImageRejected("data_too_long", f"data has {nbytes} bytes; step*height = {expected}")
    return channels


def resized_size(h: int, w: int, height: int, width: int) -> Tuple[int, int]:
    """Size after the aspect-preserving resize: lerobot 0.6.1 truncates with int(), not round."""
    ratio = max(w / width, h / height)
    return max(1, int(h / ratio)), max(1, int(w / ratio))


def resize_with_pad_u8(image: np.ndarray, height: int, width: int,
                       out: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> [height, width(, C)]: aspect kept (bilinear), 0-padded, centred.

    Geometry of lerobot 0.6.1 `resize_with_pad_torch` (odd remainder bottom/right). The resize
    writes straight into `out` (or a new zeroed array) when the target rows are contiguous (wide
    images); works per channel, so it commutes with channel reordering and dropping.
    """
    h, w = image.shape[:2]
    shape = (height, width) + image.shape[2:]
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype} {out.shape}; expected uint8 {shape}")
    rh, rw = resized_size(h, w, height, width)
    top, left = (height - rh) // 2, (width - rw) // 2
    if (rh, rw) == (h, w):
        out[top:top + rh, left:left + rw] = image
        return out
    region = out[top:top + rh, left:left + rw]
    if region.flags.c_contiguous:
        cv2.resize(image, (rw, rh), dst=region, interpolation=cv2.INTER_LINEAR)
    else:
        region[...] = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return out


def raw_image_to_rgb(encoding: str, height: int, width: int, step: int, data: Buffer,
                     is_bigendian: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                     target_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Convert a raw Image payload to a new C-contiguous [H, W, 3] uint8 RGB array.

    With `target_size` (height, width) the frame is resized with pad to it first, from the
    message bytes, and the colour conversion runs on the small image: bit-identical to converting
    first and then preprocessing.resize_with_pad (both are per-channel), without the full-size
    conversion and copy (640x480 bgr8: about 0.25 ms less per frame).
    `is_bigendian` is accepted for message parity; it does not matter for 8-bit encodings.
    The result never aliases `data`, so the message buffer can be released.
    """
    del is_bigendian
    channels = check_raw_image(encoding, height, width, step, _nbytes(data), max_pixels)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)  # [H, W, C], strided
    if channels == 1:
        pixels = pixels[:, :, 0]  # cv2 reads padded rows through the array strides
    if target_size is not None and tuple(target_size) != (height, width):
        pixels = resize_with_pad_u8(pixels, target_size[0], target_size[1])
    code = RAW_ENCODINGS[encoding][1]
    if code is None:
        return np.array(pixels, dtype=np.uint8, order="C", copy=True) \
            if pixels.base is not None or not pixels.flags.c_contiguous else pixels
    return cv2.cvtColor(pixels, code)


def _png_size(data: bytes) -> Tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageRejected("corrupt_data", f"PNG of {len(data)} bytes has no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    i, n = 2, len(data)
    for _ in range(_JPEG_MAX_SEGMENTS):
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 1 >= n or data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9) or i + 4 > n:
            break
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise ImageRejected("corrupt_data", f"JPEG of {n} bytes has no readable frame header (SOF)")


def _check_jpeg_end(data: Buffer) -> None:
    # libjpeg fills a cut-off scan with grey and reports success: refuse frames without EOI
    tail = bytes(memoryview(data)[-64:]).rstrip(b"\x00")  # some drivers pad after EOI
    if not tail.endswith(_JPEG_EOI):
        n = _nbytes(data)
        raise ImageRejected("corrupt_data", f"JPEG of {n} bytes has no end-of-image marker "
                                            "(FF D9); the frame is truncated")


def compressed_image_size(fmt: str, data: Buffer) -> Tuple[str, int, int]:
    """Return (kind, width, height) read from the PNG/JPEG header only.

    Reasons: unsupported_format (depth or 16-bit payloads, unknown magic), empty_data, corrupt_data.
    The payload kind comes from the magic bytes; the format string only screens out depth streams.
    """
    fmt_l = fmt.lower()
    if "compresseddepth" in fmt_l or fmt_l.split(";")[0].strip() in ("16uc1", "32fc1", "mono16"):
        raise ImageRejected("unsupported_format", f"format '{fmt}' is a depth/16-bit stream")
    head = bytes(memoryview(data)[:65536])  # headers sit at the start; bounds the scan
    if not head:
        raise ImageRejected("empty_data", "CompressedImage has no data")
    if head.startswith(_PNG_MAGIC):
        return ("png",) + _png_size(head)
    if head.startswith(_JPEG_MAGIC):
        return ("jpeg",) + _jpeg_size(head)
    msg = f"format '{fmt}': data starts with {head[:8].hex()}, which is neither JPEG nor PNG"
    raise ImageRejected("unsupported_format", msg)


def check_compressed_image(fmt: str, data: Buffer, max_pixels: int = DEFAULT_MAX_PIXELS
                           ) -> Tuple[int, int]:
    """Validate a CompressedImage from its header; return (width, height).

    Adds image_too_large, and corrupt_data for a JPEG without its end-of-image marker.
    """
    kind, width, height = compressed_image_size(fmt, data)
    if width <= 0 or height <= 0:
        raise ImageRejected("zero_size", f"compressed image header says {width}x{height}")
    if width * height > max_pixels:
        msg = f"compressed image is {width}x{height} = {width * height} pixels; limit {max_pixels}"
        raise ImageRejected("image_too_large", msg)
    if kind == "jpeg":
        _check_jpeg_end(data)
    return width, height


def compressed_image_to_rgb(fmt: str, data: Buffer, max_pixels: int = DEFAULT_MAX_PIXELS,
                            target_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Decode a JPEG/PNG CompressedImage payload to [H, W, 3] uint8 RGB (header checked first).

    `target_size` (height, width): resize with pad before the BGR->RGB swap (see
    raw_image_to_rgb)."""
    width, height = check_compressed_image(fmt, data, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageRejected("corrupt_data", f"cv2.imdecode could not decode {_nbytes(data)} bytes")
    if bgr.shape[:2] != (height, width):
        msg = f"decoded {bgr.shape[1]}x{bgr.shape[0]} but the header says {width}x{height}"
        raise ImageRejected("corrupt_data", msg)
    if target_size is not None and tuple(target_size) != (height, width):
        bgr = resize_with_pad_u8(bgr, target_size[0], target_size[1])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def raw_image_decoder(encoding: str, height: int, width: int, step: int, data: Buffer,
                      max_pixels: int = DEFAULT_MAX_PIXELS,
                      target_size: Optional[Tuple[int, int]] = None) -> Callable[[], np.ndarray]:
    """Check a raw image now (cheap, in the callback) and return a closure converting it later
    (resized with pad to `target_size` when given)."""
    check_raw_image(encoding, height, width, step, _nbytes(data), max_pixels)
    return lambda: raw_image_to_rgb(encoding, height, width, step, data, max_pixels=max_pixels,
                                    target_size=target_size)


def compressed_image_decoder(fmt: str, data: Buffer, max_pixels: int = DEFAULT_MAX_PIXELS,
                             target_size: Optional[Tuple[int, int]] = None
                             ) -> Callable[[], np.ndarray]:
    """Check a compressed image header now and return a closure decoding it later."""
    check_compressed_image(fmt, data, max_pixels)
    return lambda: compressed_image_to_rgb(fmt, data, max_pixels=max_pixels,
                                           target_size=target_size)

