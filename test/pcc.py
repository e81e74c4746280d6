"""One PCC helper and one threshold table for every TTNN-vs-torch comparison.

Floors are the seed's PCC checklist; targets are this project's (bfloat16 weights). bfloat8_b
weights are held to the floors and their measured values are printed (`-s`) for the report.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

# component: (seed floor, bfloat16 target)
THRESHOLDS: Dict[str, Tuple[float, float]] = {
    "embed_actions": (0.97, 0.99),
    "embed_state": (0.97, 0.99),
    "embed_timestep": (0.99, 0.99),
    "project_output": (0.97, 0.99),
    "fuse_action_time": (0.95, 0.99),
    "embed_suffix": (0.95, 0.99),
    "embed_images": (0.99, 0.99),
    "embed_language": (0.99, 0.99),
    "embed_prefix": (0.95, 0.99),
    "velocity": (0.90, 0.99),
    "actions": (0.90, 0.98),
}


def pcc(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson correlation of the flattened tensors, in float64."""
    a = actual.detach().flatten().to(torch.float64)
    b = expected.detach().flatten().to(torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    if denom == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(a @ b / denom)


def threshold(component: str, weight_dtype: str) -> float:
    floor, target = THRESHOLDS[component]
    return target if weight_dtype == "bfloat16" else floor


def assert_pcc(actual: torch.Tensor, expected: torch.Tensor, component: str,
               weight_dtype: str = "bfloat16", label: str = "") -> float:
    """Assert PCC >= the table's value for `component` and print the measurement."""
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{component} {label}: non-finite values in the TTNN output")
    value = pcc(actual, expected)
    bound = threshold(component, weight_dtype)
    diff = (actual.double() - expected.double()).norm()
    rel = float(diff / expected.double().norm().clamp_min(1e-30))
    print(f"PCC {component:<17} {weight_dtype:<10} {label:<14} {value:.6f} (>= {bound}) "
          f"rel-L2 {rel:.2e}")
    assert value >= bound, (f"{component} {label}: PCC {value:.6f} < {bound} with "
                            f"{weight_dtype} weights (rel-L2 {rel:.3e})")
    return value
