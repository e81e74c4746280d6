"""Diagnostics reflect the present: a failed backend switch stops warning once withdrawn."""

from types import SimpleNamespace

from pi0_ttnn_node.ros.diagnostics import PolicyStatus


def _spec(label: str):
    return SimpleNamespace(label=lambda: label)


def test_failed_switch_warning_clears_when_the_running_backend_is_requested_again():
    st = PolicyStatus(backend_active="torch/cpu/float32")
    st.switch_requested("torch/cuda:7/float32")
    st.backend_event("primary", _spec("torch/cuda:7/float32"), RuntimeError("no CUDA"))
    assert st.backend_error.startswith("torch/cuda:7/float32: no CUDA")
    assert st.backend_active == "torch/cpu/float32"
    # the worker skips a switch to the spec it runs and reports nothing: the request clears it
    st.switch_requested("torch/cpu/float32")
    assert st.backend_error == "" and st.backend_requested == "torch/cpu/float32"


def test_failed_switch_warning_clears_when_a_later_switch_succeeds():
    st = PolicyStatus(backend_active="torch/cpu/float32")
    st.switch_requested("ttnn/0")
    st.backend_event("primary", _spec("ttnn/0"), RuntimeError("no card"))
    st.switch_requested("torch/cpu/bfloat16")
    assert st.backend_error  # still failing until the new switch is done
    st.backend_event("primary", _spec("torch/cpu/bfloat16"), None)
    assert st.backend_error == "" and st.backend_active == "torch/cpu/bfloat16"


def test_a_new_failing_request_keeps_warning():
    st = PolicyStatus(backend_active="torch/cpu/float32")
    st.backend_event("primary", _spec("ttnn/0"), RuntimeError("no card"))
    st.switch_requested("ttnn/1")
    assert st.backend_error.startswith("ttnn/0")
