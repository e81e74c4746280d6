"""Hostile inputs for tools/hostile_inputs.py: what to send and which reject reason to expect.

Each case replaces one input channel (primary raw camera, compressed wrist camera, joint states)
for a short window, or sends one instruction or one parameter set. `expected` is the reject
reason the node must count on /diagnostics ("" = nothing to count); `used` marks inputs that the
node is designed to accept (a zero stamp falls back to receipt time). Images are 64x48.
"""

from __future__ import annotations

import array
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import cv2
import numpy as np
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState

from pi0_ttnn_node.ros.conversions import sec_to_stamp

NODE = "/pi0_ttnn_node"
GOOD_INSTRUCTION = "pick up the cube"
W, H = 64, 48
JOINTS = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]
_RNG = np.random.default_rng(7)
FRAME = _RNG.integers(0, 255, (H, W, 3), dtype=np.uint8)
JPEG = cv2.imencode(".jpg", FRAME)[1].tobytes()
PNG = cv2.imencode(".png", FRAME)[1].tobytes()
POSITIONS = np.linspace(-0.5, 0.5, len(JOINTS))


@dataclass(frozen=True)
class Case:
    kind: str
    channel: str  # primary | wrist | joints | burst | instruction | param
    expected: str  # reject reason counted on /diagnostics; "" = none
    make: Callable[..., Any]  # stream channels: make(stamp, i) -> message; others: payload
    ci: bool = False  # part of the fast CI subset
    used: bool = False  # the node is designed to use this input (no "not published" check)


@dataclass
class Row:
    kind: str
    expected: str
    observed: str = ""
    published_from_it: str = ""
    resumed: bool = False
    active: bool = False
    ok: bool = False


def raw(stamp: float, encoding: str = "rgb8", width: int = W, height: int = H,
        step: Optional[int] = None, data: Optional[bytes] = None) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * 3 if step is None else step)
    msg.header.stamp = sec_to_stamp(max(stamp, 0.0))
    msg.data = array.array("B", FRAME.tobytes() if data is None else data)
    return msg


def compressed(stamp: float, data: bytes = JPEG, fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage(format=fmt, data=array.array("B", data))
    msg.header.stamp = sec_to_stamp(max(stamp, 0.0))
    return msg


def joints(stamp: float, names: Optional[List[str]] = None,
           positions: Optional[List[float]] = None) -> JointState:
    msg = JointState(name=list(JOINTS if names is None else names),
                     position=[float(p) for p in (POSITIONS if positions is None else positions)])
    msg.header.stamp = sec_to_stamp(max(stamp, 0.0))
    return msg


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def _with(index: int, value: float) -> List[float]:
    out = list(POSITIONS)
    out[index] = value
    return out


_SOS = JPEG.find(b"\xff\xda")
STREAM_CASES = [
    Case("raw: data shorter than step*height", "primary", "data_too_short",
         lambda t, i: raw(t, data=FRAME.tobytes()[:-W]), ci=True),
    Case("raw: data longer than step*height", "primary", "data_too_long",
         lambda t, i: raw(t, data=FRAME.tobytes() + bytes(W * 3))),
    Case("raw: step smaller than width*channels", "primary", "bad_step",
         lambda t, i: raw(t, step=W * 3 - 1, data=FRAME.tobytes()[: (W * 3 - 1) * H]), ci=True),
    Case("raw: zero width", "primary", "zero_size", lambda t, i: raw(t, width=0, data=b"")),
    Case("raw: zero height", "primary", "zero_size", lambda t, i: raw(t, height=0, data=b"")),
    Case("raw: encoding 16UC1", "primary", "unsupported_encoding",
         lambda t, i: raw(t, "16UC1", step=W * 2, data=bytes(W * 2 * H)), ci=True),
    Case("raw: encoding 32FC1", "primary", "unsupported_encoding",
         lambda t, i: raw(t, "32FC1", step=W * 4, data=bytes(W * 4 * H))),
    Case("raw: encoding bayer_rggb8", "primary", "unsupported_encoding",
         lambda t, i: raw(t, "bayer_rggb8", step=W, data=bytes(W * H))),
    Case("raw: encoding yuv422", "primary", "unsupported_encoding",
         lambda t, i: raw(t, "yuv422", step=W * 2, data=bytes(W * 2 * H))),
    Case("raw: 8K header (7680x4320), tiny data", "primary", "image_too_large",
         lambda t, i: raw(t, width=7680, height=4320, data=bytes(16))),
    Case("compressed: empty CompressedImage", "wrist", "empty_data",
         lambda t, i: compressed(t, b""), ci=True),
    Case("compressed: corrupt JPEG (cut before scan)", "wrist", "corrupt_data",
         lambda t, i: compressed(t, JPEG[:_SOS]), ci=True),
    Case("compressed: truncated JPEG (half the bytes)", "wrist", "corrupt_data",
         lambda t, i: compressed(t, JPEG[: len(JPEG) // 2])),
    Case("compressed: corrupt PNG body", "wrist", "corrupt_data",
         lambda t, i: compressed(t, PNG[:33] + bytes(200), "png")),
    Case("compressed: bytes neither JPEG nor PNG", "wrist", "unsupported_format",
         lambda t, i: compressed(t, b"GIF89a" + bytes(100))),
    Case("compressed: 16UC1 compressedDepth", "wrist", "unsupported_format",
         lambda t, i: compressed(t, PNG, "16UC1; compressedDepth png")),
    Case("compressed: 8K PNG header (7680x4320)", "wrist", "image_too_large",
         lambda t, i: compressed(t, png_header_only(7680, 4320), "png"), ci=True),
    Case("stamp: zero (receipt time used)", "primary", "", lambda t, i: raw(0.0), used=True),
    Case("stamp: 5 s in the future", "primary", "future_stamp",
         lambda t, i: raw(t + 5.0), ci=True),
    Case("stamp: 1000 s in the past", "primary", "stale_image", lambda t, i: raw(t - 1000.0)),
    Case("stamp: jumping backwards", "primary", "out_of_order",
         lambda t, i: raw(t - 1.0 - 0.05 * i)),
    Case("frame-rate burst: 300 frames at once", "burst", "", lambda t, i: raw(t), used=True),
    Case("joint_states: a joint missing", "joints", "stale_state",
         lambda t, i: joints(t, JOINTS[:-1], list(POSITIONS[:-1])), ci=True),
    Case("joint_states: duplicate names", "joints", "duplicate_joints",
         lambda t, i: joints(t, JOINTS[:-1] + ["joint_1"])),
    Case("joint_states: names/positions length mismatch", "joints", "length_mismatch",
         lambda t, i: joints(t, positions=list(POSITIONS[:-2]))),
    Case("joint_states: NaN position", "joints", "nonfinite_state",
         lambda t, i: joints(t, positions=_with(2, float("nan"))), ci=True),
    Case("joint_states: Inf position", "joints", "nonfinite_state",
         lambda t, i: joints(t, positions=_with(4, float("inf")))),
    Case("joint_states: stamp 100 s in the future", "joints", "future_stamp",
         lambda t, i: joints(t + 100.0), ci=True),
]

INSTRUCTION_CASES = [
    Case("instruction: empty", "instruction", "no_instruction", lambda: "", ci=True),
    Case("instruction: whitespace only", "instruction", "no_instruction", lambda: " \t\n  "),
    Case("instruction: 100 kB", "instruction", "instruction_too_long",
         lambda: "pick up the cube " * 6250, ci=True),
    Case("instruction: control characters", "instruction", "", lambda:
         "pick\x01 up\x1b[31m the\x07 cube\u202e\u200b", used=True),
    Case("instruction: non-UTF-8-looking (mojibake, U+FFFD, C1)", "instruction", "",
         lambda: "pick up \u00c3\u00a9 \ufffd\ufffd the \x85\x9b cube", used=True),
]

P = Parameter.Type
PARAM_CASES = [
    Case("param: unknown backend", "param", "refused",
         lambda: Parameter("policy.backend", P.STRING, "tensorflow"), ci=True),
    Case("param: unknown shadow backend", "param", "refused",
         lambda: Parameter("policy.shadow_backend", P.STRING, "onnx")),
    Case("param: ttnn_device_id out of range", "param", "refused",
         lambda: Parameter("policy.ttnn_device_id", P.INTEGER, 5000), ci=True),
    Case("param: torch_dtype unknown", "param", "refused",
         lambda: Parameter("policy.torch_dtype", P.STRING, "int8")),
    Case("param: backend of the wrong type", "param", "refused",
         lambda: Parameter("policy.backend", P.INTEGER, 42)),
    Case("param: control_rate_hz NaN", "param", "refused",
         lambda: Parameter("control_rate_hz", P.DOUBLE, float("nan")), ci=True),
    Case("param: max_start_jump +Inf", "param", "refused",
         lambda: Parameter("limits.max_start_jump", P.DOUBLE, float("inf"))),
    Case("param: max_image_age_s negative", "param", "refused",
         lambda: Parameter("sync.max_image_age_s", P.DOUBLE, -1.0)),
    Case("param: malformed policy.fault_injection", "param", "refused",
         lambda: Parameter("policy.fault_injection", P.STRING, "mode=explode")),
    Case("param: undeclared name", "param", "refused",
         lambda: Parameter("policy.turbo", P.BOOL, True)),
]

ALL_CASES = STREAM_CASES + INSTRUCTION_CASES + PARAM_CASES
