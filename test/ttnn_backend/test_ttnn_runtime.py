"""Opening and closing the TTNN device: no silent emulation, clean close, config checks."""

from __future__ import annotations

import os

import pytest

from pi0_ttnn_node.errors import BackendUnavailableError, ConfigError
from pi0_ttnn_node.ttnn_backend import runtime
from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, import_ttnn, open_tt_device

ttnn = import_ttnn(emulate=True)


class FakeCard:
    closed = 0


def test_opening_a_real_device_without_a_card_raises_and_names_emulation(monkeypatch):
    monkeypatch.setattr(runtime, "CARD_GLOB", "/nonexistent/tenstorrent*")
    with pytest.raises(BackendUnavailableError, match=r"no Tenstorrent device was found.*ttnn_emulate: true"):
        open_tt_device(TtRuntimeConfig())
    assert ttnn.linear.__class__.__name__ == "FastOperation"  # nothing was emulated behind our back


def test_a_failing_open_device_is_reported_with_its_cause(monkeypatch):
    monkeypatch.setattr(runtime, "card_present", lambda: True)

    def refuse(**kwargs):
        raise RuntimeError("firmware too old")

    monkeypatch.setattr(ttnn, "open_device", refuse)
    with pytest.raises(BackendUnavailableError, match=r"firmware too old.*TtRuntimeConfig\(emulate=True\)"):
        open_tt_device(TtRuntimeConfig())


def test_a_real_device_is_opened_with_the_config_and_closed_exactly_once(monkeypatch):
    card, seen = FakeCard(), {}
    monkeypatch.setattr(runtime, "card_present", lambda: True)
    monkeypatch.setattr(ttnn, "open_device", lambda **kwargs: seen.update(kwargs) or card)
    monkeypatch.setattr(ttnn, "synchronize_device", lambda device: None)

    def close(device):
        device.closed += 1

    monkeypatch.setattr(ttnn, "close_device", close)
    cfg = TtRuntimeConfig(trace_region_size=80_000_000, num_command_queues=2, trace="whole")
    handle = open_tt_device(cfg)
    assert seen == dict(device_id=0, l1_small_size=24576, trace_region_size=80_000_000, num_command_queues=2)
    with pytest.raises(BackendUnavailableError, match="already open"):
        open_tt_device(cfg)
    with pytest.raises(BackendUnavailableError, match="emulated device"):
        handle.stats
    runtime.close_all()  # what atexit runs
    handle.close()
    assert card.closed == 1 and not handle.is_open


def test_a_device_is_closed_when_its_with_block_raises():
    with pytest.raises(ValueError):
        with open_tt_device(TtRuntimeConfig(emulate=True)) as handle:
            raise ValueError("model failed")
    assert not handle.is_open and not handle.device.is_open
    again = open_tt_device(TtRuntimeConfig(emulate=True))  # and can be opened again
    ttnn.close_device(again.device)  # model code may close it through ttnn itself
    assert not again.device.is_open
    open_tt_device(TtRuntimeConfig(emulate=True)).close()


def test_import_ttnn_sets_the_mock_descriptor_only_when_unset(monkeypatch):
    monkeypatch.delenv(runtime.MOCK_ENV, raising=False)
    import_ttnn(emulate=False)
    assert runtime.MOCK_ENV not in os.environ
    import_ttnn(emulate=True, board="blackhole_p150")
    assert os.environ[runtime.MOCK_ENV].endswith("mock_cluster/blackhole_p150.yaml")
    monkeypatch.setenv(runtime.MOCK_ENV, "/custom/cluster.yaml")
    import_ttnn(emulate=True)
    assert os.environ[runtime.MOCK_ENV] == "/custom/cluster.yaml"


def test_shipped_descriptors_exist_for_both_boards():
    for board in runtime.EMULATED_BOARDS:
        assert runtime.mock_cluster_descriptor(board).is_file()


@pytest.mark.parametrize("field,value", [
    ("weight_dtype_vlm", "bfloat4"), ("fidelity_denoise", "HiFi5"), ("num_command_queues", 3),
    ("emulated_board", "galaxy"), ("trace", "whole"), ("kv_cache_dtype", "int8"),
])
def test_runtime_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field if field != "trace" else "trace_region_size"):
        TtRuntimeConfig(**{field: value})


def test_compute_kernel_config_uses_the_named_fidelity():
    cfg = runtime.compute_kernel_config(ttnn, "HiFi2", fp32_dest_acc=True)
    assert cfg.math_fidelity == ttnn.MathFidelity.HiFi2 and cfg.fp32_dest_acc_en
    assert runtime.ttnn_dtype(ttnn, "bfloat8_b") == ttnn.bfloat8_b
