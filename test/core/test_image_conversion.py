"""Raw and compressed image conversion: every encoding, step padding, every rejection reason."""
import array
import struct

import cv2
import numpy as np
import pytest

from pi0_ttnn_node.errors import ObservationError
from pi0_ttnn_node.image_conversion import (ImageRejected, check_compressed_image,
                                            compressed_image_decoder, compressed_image_to_rgb,
                                            raw_image_decoder, raw_image_to_rgb)

H, W = 6, 5


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _pack(pixels: np.ndarray, pad: int) -> tuple:
    """Return (step, bytes) with `pad` junk bytes after each row."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return data.shape[1], data.tobytes()


def _encoded(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return rgb[..., ::-1]
    if encoding == "rgba8":
        return np.concatenate([rgb, np.full((H, W, 1), 7, np.uint8)], axis=2)
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], np.full((H, W, 1), 7, np.uint8)], axis=2)
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_convert_to_rgb_with_and_without_row_padding(rgb, encoding, pad):
    step, data = _pack(_encoded(rgb, encoding), pad)
    out = raw_image_to_rgb(encoding, H, W, step, data)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 2])
def test_mono8_is_replicated_to_three_channels(pad):
    mono = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    step, data = _pack(mono, pad)
    out = raw_image_to_rgb("mono8", H, W, step, data)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], mono)


def test_conversion_accepts_rclpy_array_and_memoryview_and_does_not_alias_the_buffer(rgb):
    buf = array.array("B", rgb.tobytes())
    out = raw_image_to_rgb("rgb8", H, W, W * 3, buf)
    np.testing.assert_array_equal(out, rgb)
    buf[0] = (buf[0] + 1) % 256
    assert out[0, 0, 0] == rgb[0, 0, 0]
    np.testing.assert_array_equal(raw_image_to_rgb("rgb8", H, W, W * 3, memoryview(buf)).shape,
                                  (H, W, 3))


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "bayer_rggb8", "yuv422", "mono16", "RGB8"])
def test_unsupported_encodings_are_rejected(encoding):
    with pytest.raises(ImageRejected) as err:
        raw_image_to_rgb(encoding, H, W, W * 4, bytes(H * W * 4))
    assert err.value.reason == "unsupported_encoding"
    assert isinstance(err.value, ObservationError)


@pytest.mark.parametrize("h, w, step, nbytes, reason", [
    (0, W, W * 3, 0, "zero_size"),
    (H, 0, 0, 0, "zero_size"),
    (H, W, W * 3 - 1, (W * 3 - 1) * H, "bad_step"),
    (H, W, W * 3, W * 3 * H - 1, "data_too_short"),
    (H, W, W * 3, W * 3 * H + 1, "data_too_long"),
    (4320, 7680, 7680 * 3, 0, "image_too_large"),
])
def test_malformed_raw_images_are_rejected_with_their_reason(h, w, step, nbytes, reason):
    with pytest.raises(ImageRejected) as err:
        raw_image_to_rgb("bgr8", h, w, step, bytes(nbytes))
    assert err.value.reason == reason


def test_max_pixels_is_configurable():
    with pytest.raises(ImageRejected) as err:
        raw_image_to_rgb("mono8", H, W, W, bytes(H * W), max_pixels=H * W - 1)
    assert err.value.reason == "image_too_large"


def test_raw_decoder_checks_now_and_converts_later(rgb):
    decode = raw_image_decoder("bgr8", H, W, W * 3, rgb[..., ::-1].tobytes())
    np.testing.assert_array_equal(decode(), rgb)
    with pytest.raises(ImageRejected):
        raw_image_decoder("bgr8", H, W, W * 3, bytes(10))


def test_png_round_trip_is_lossless_and_rgb_ordered(rgb):
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(compressed_image_to_rgb("png", png.tobytes()), rgb)
    # the format string of image_transport's compressed plugin is accepted as well
    out = compressed_image_to_rgb("bgr8; png compressed bgr8", png.tobytes())
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_round_trip_is_close_and_rgb_ordered():
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 200
    ok, jpg = cv2.imencode(".jpg", red[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_image_to_rgb("jpeg", jpg.tobytes())
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - red).max() <= 3


def test_corrupt_compressed_bytes_are_rejected(rgb):
    ok, jpg = cv2.imencode(".jpg", rgb)
    truncated = jpg.tobytes()[:40]  # ends inside the quantisation tables, before the SOF
    for data in (truncated, b"\xff\xd8" + bytes(100), b"\x89PNG\r\n\x1a\n" + bytes(30)):
        with pytest.raises(ImageRejected) as err:
            compressed_image_to_rgb("jpeg", data)
        assert err.value.reason == "corrupt_data"


def test_jpeg_with_valid_header_but_garbage_body_is_rejected(rgb):
    ok, jpg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    sos = data.index(b"\xff\xda")
    data[sos:] = b"\x00" * (len(data) - sos)
    with pytest.raises(ImageRejected) as err:
        compressed_image_to_rgb("jpeg", bytes(data))
    assert err.value.reason == "corrupt_data"


def test_empty_and_unknown_compressed_data_are_rejected():
    with pytest.raises(ImageRejected) as err:
        compressed_image_to_rgb("jpeg", b"")
    assert err.value.reason == "empty_data"
    with pytest.raises(ImageRejected) as err:
        compressed_image_to_rgb("jpeg", b"GIF89a" + bytes(100))
    assert err.value.reason == "unsupported_format"
    with pytest.raises(ImageRejected) as err:
        compressed_image_to_rgb("16UC1; compressedDepth png", b"\x89PNG\r\n\x1a\n" + bytes(30))
    assert err.value.reason == "unsupported_format"


def _huge_png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def _huge_jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xda" + bytes(64) + b"\xff\xd9"


@pytest.mark.parametrize("make", [_huge_png_header, _huge_jpeg_header])
def test_huge_compressed_image_is_rejected_from_its_header_without_decoding(make, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("imdecode must not run for an oversized image")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    data = make(7680, 4320)
    assert check_compressed_image("jpeg", make(640, 480)) == (640, 480)
    with pytest.raises(ImageRejected) as err:  # refused from the header: imdecode never runs
        compressed_image_to_rgb("jpeg", data)
    assert err.value.reason == "image_too_large"


def test_jpeg_header_parser_reads_real_encoder_output():
    ok, jpg = cv2.imencode(".jpg", np.zeros((37, 53, 3), np.uint8))
    assert check_compressed_image("jpeg", jpg.tobytes()) == (53, 37)
    decode = compressed_image_decoder("jpeg", jpg.tobytes())
    assert decode().shape == (37, 53, 3)


def _frame(h, w, encoding, seed=3):
    channels = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("hw, pad", [((48, 64), 0), ((48, 64), 5), ((64, 48), 3), ((30, 64), 0),
                                     ((224, 224), 2), ((20, 20), 0)])
def test_decoding_to_the_model_size_equals_decoding_then_resizing(encoding, hw, pad):
    """Resizing before the colour conversion is bit-identical to preprocessing.resize_with_pad
    on the converted frame (both per channel), for every encoding, shape and row padding."""
    from pi0_ttnn_node.preprocessing import resize_with_pad

    step, data = _pack(_frame(*hw, encoding), pad)
    full = raw_image_to_rgb(encoding, hw[0], hw[1], step, data)
    expected = resize_with_pad(full, 32, 32)
    direct = raw_image_to_rgb(encoding, hw[0], hw[1], step, data, target_size=(32, 32))
    assert direct.shape == (32, 32, 3) and direct.flags.c_contiguous
    np.testing.assert_array_equal(direct, expected)
    decoded = raw_image_decoder(encoding, hw[0], hw[1], step, data, target_size=(32, 32))()
    np.testing.assert_array_equal(decoded, expected)


def test_compressed_decoding_to_the_model_size_equals_decoding_then_resizing():
    from pi0_ttnn_node.preprocessing import resize_with_pad

    img = _frame(48, 64, "bgr8")
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, img)[1].tobytes()
        full = compressed_image_to_rgb(ext[1:], data)
        direct = compressed_image_decoder(ext[1:], data, target_size=(32, 32))()
        np.testing.assert_array_equal(direct, resize_with_pad(full, 32, 32))


def test_decoding_to_the_model_size_does_not_alias_the_message_buffer():
    img = _frame(32, 32, "rgb8")
    buf = bytearray(img.tobytes())
    out = raw_image_to_rgb("rgb8", 32, 32, 96, buf, target_size=(32, 32))
    buf[:3] = b"\x00\x00\x00"
    assert out[0, 0].tolist() == img[0, 0].tolist()
