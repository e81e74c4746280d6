"""Write lerobot 0.6.1 reference fixtures for tiny PI0 and PI0.5 (weights, config, inputs, outputs).

Runs only inside .venv-lerobot (see README.md), never in CI: it imports lerobot, builds the model
with lerobot's own constructor at tiny sizes (lerobot_tiny.py), re-randomises every weight with a
fixed seed, runs `policy.model.sample_actions` on adversarial inputs (2 rows, a masked middle camera
in one row, a masked last camera in both, different prompt lengths) and records the prefix
embeddings, every denoise-step velocity and the actions. Consumer:
test/torch_backend/test_lerobot_equivalence.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List
from unittest import mock

import lerobot_tiny as lt  # sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before any HF import
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
SEED = 20240611
BATCH = 2
STATE_DIM = 8    # robot dims before padding to 32 (distinct, so truncation mistakes show)
ACTION_DIM = 7
PROMPT_LEN = {"pi0": 48, "pi05": 200}
VALID_TOKENS = {"pi0": (29, 11), "pi05": (141, 57)}  # per row, right padded with id 0
# [camera, row]: camera 1 masked in row 0 only (a masked slot *between* valid ones shifts every
# later position id), camera 2 masked in both rows.
IMAGE_MASKS = [[True, True], [False, True], [False, False]]
MAX_FIXTURE_BYTES = 3 * 1024 * 1024


def make_stats(seed: int) -> Dict[str, Dict[str, torch.Tensor]]:
    """Dataset statistics at the raw robot dims (mean/std, quantiles, min/max) for both features."""
    gen = torch.Generator().manual_seed(seed)

    def one(dim: int) -> Dict[str, torch.Tensor]:
        mean = torch.randn(dim, generator=gen)
        std = torch.rand(dim, generator=gen) + 0.5
        q01, q99 = mean - 2.0 * std, mean + 2.0 * std
        return {"mean": mean, "std": std, "q01": q01, "q99": q99, "min": q01 - 0.5,
                "max": q99 + 0.5, "count": torch.tensor([1000])}

    return {"observation.state": one(STATE_DIM), "action": one(ACTION_DIM)}


def make_processors(model_type: str, config, stats):
    """lerobot's real pre/post-processor pipelines, for their saved files and the normaliser.

    The tokenizer step would download the gated PaliGemma tokenizer in its constructor; a stand-in
    AutoTokenizer keeps it offline. Its config still names `google/paligemma-3b-pt-224`, exactly as
    lerobot saves it, and the fixture never tokenises (token ids are given directly).
    """
    import lerobot.processor.tokenizer_processor as tokenizer_processor

    class _OfflineAutoTokenizer:
        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any) -> object:
            return object()

    if model_type == "pi0":
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as make
    else:
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as make
    with mock.patch.object(tokenizer_processor, "AutoTokenizer", _OfflineAutoTokenizer):
        return make(config, stats)


def normalise_state(preprocessor, raw_state: torch.Tensor) -> torch.Tensor:
    """Run only lerobot's NormalizerProcessorStep on a raw state batch."""
    from lerobot.processor import TransitionKey
    from lerobot.processor.converters import create_transition

    steps = [s for s in preprocessor.steps if type(s).__name__ == "NormalizerProcessorStep"]
    if len(steps) != 1:
        raise RuntimeError(f"expected one NormalizerProcessorStep, found {len(steps)}")
    out = steps[0](create_transition(observation={"observation.state": raw_state}))
    return out[TransitionKey.OBSERVATION]["observation.state"]


def make_inputs(model_type: str, vocab_size: int, seed: int, stats,
                preprocessor) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    length = PROMPT_LEN[model_type]
    images_uint8 = torch.randint(0, 256, (len(lt.CAMERAS), BATCH, 3, 224, 224), generator=gen,
                                 dtype=torch.uint8)
    tokens = torch.randint(3, vocab_size, (BATCH, length), generator=gen, dtype=torch.int64)
    masks = torch.zeros(BATCH, length, dtype=torch.bool)
    for row, n in enumerate(VALID_TOKENS[model_type]):
        masks[row, :n] = True
    tokens = torch.where(masks, tokens, torch.zeros_like(tokens))
    s = stats["observation.state"]
    raw_state = s["mean"] + s["std"] * (torch.rand(BATCH, STATE_DIM, generator=gen) * 3.0 - 1.5)
    normalized_state = normalise_state(preprocessor, raw_state)
    noise = torch.randn(BATCH, 50, 32, generator=gen)
    out = {"images_uint8": images_uint8, "image_masks": torch.tensor(IMAGE_MASKS),
           "lang_tokens": tokens, "lang_masks": masks, "noise": noise,
           "raw_state": raw_state, "normalized_state": normalized_state.contiguous()}
    if model_type == "pi0":  # normalise, then zero-pad to max_state_dim (lerobot's order)
        out["state"] = torch.nn.functional.pad(normalized_state, (0, 32 - STATE_DIM)).contiguous()
    return out


def record_run(policy, model_type: str, io: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Run lerobot's sample_actions once, capturing embed_prefix and every denoise_step."""
    model = policy.model
    rec: Dict[str, List[torch.Tensor]] = {"prefix": [], "t": [], "x": [], "v": []}
    orig_prefix, orig_step = model.embed_prefix, model.denoise_step

    def embed_prefix(*args, **kwargs):
        out = orig_prefix(*args, **kwargs)
        rec["prefix"].append(out)
        return out

    def denoise_step(*args, **kwargs):
        v = orig_step(*args, **kwargs)
        rec["t"].append(kwargs["timestep"].clone())
        rec["x"].append(kwargs["x_t"].clone())
        rec["v"].append(v.clone())
        return v

    # sample_actions looks both up on `self`, so instance attributes shadow the bound methods.
    model.embed_prefix, model.denoise_step = embed_prefix, denoise_step
    try:
        images = lt.images_from_uint8(io["images_uint8"])
        img_masks = [io["image_masks"][i] for i in range(io["image_masks"].shape[0])]
        actions = lt.run_sample_actions(policy, model_type, images, img_masks, io["lang_tokens"],
                                        io["lang_masks"], io.get("state"), io["noise"])
    finally:
        del model.embed_prefix, model.denoise_step
    if len(rec["prefix"]) != 1 or len(rec["v"]) != policy.config.num_inference_steps:
        raise RuntimeError(f"expected 1 prefix and {policy.config.num_inference_steps} steps, got "
                           f"{len(rec['prefix'])} and {len(rec['v'])}")
    prefix_embs, prefix_pad_masks, _ = rec["prefix"][0]
    ts = torch.stack(rec["t"])
    if not torch.equal(ts, ts[:, :1].expand_as(ts)):
        raise RuntimeError("timesteps differ across batch rows")
    return {"prefix_embs": prefix_embs.contiguous(),
            "prefix_pad_masks": prefix_pad_masks.contiguous(),
            "timesteps": ts[:, 0].contiguous(), "x_t": torch.stack(rec["x"]).contiguous(),
            "velocities": torch.stack(rec["v"]).contiguous(), "actions": actions.contiguous()}


def versions(seed: int, model_type: str, policy) -> Dict[str, Any]:
    pkgs = ("lerobot", "torch", "transformers", "safetensors", "numpy")
    return {
        "generator": "tools/lerobot_peer/make_fixtures.py",
        "model_type": model_type,
        "seed": seed,
        "python": platform.python_version(),
        **{p: metadata.version(p) for p in pkgs},
        "inputs": {
            "batch": BATCH, "state_dim": STATE_DIM, "action_dim": ACTION_DIM,
            "tokenizer_max_length": PROMPT_LEN[model_type],
            "valid_tokens_per_row": list(VALID_TOKENS[model_type]),
            "image_masks_camera_by_row": IMAGE_MASKS,
            "state": ("raw_state [B,8] -> lerobot NormalizerProcessorStep -> normalized_state; PI0 "
                      "feeds it zero-padded to 32 as `state`, PI0.5 has no state input"),
            "actions_robot": "lerobot postprocessor(actions[:, :, :action_dim]) (unnormalised)",
            "image_float_convention": ("float32(images_uint8) / 255 * 2 - 1, per camera "
                                       "[B,3,224,224]"),
            "call": ("policy.model.sample_actions(images, img_masks, lang_tokens, lang_masks"
                     + (", state" if model_type == "pi0" else "") + ", noise=noise)"),
        },
        "hf_configs": lt.hf_sub_configs(policy),
    }


def build_randomised(model_type: str, seed: int):
    cfg = lt.make_lerobot_config(model_type, STATE_DIM, ACTION_DIM, PROMPT_LEN[model_type])
    policy = lt.build_policy(model_type, cfg, lt.TINY_DIMS)
    lt.randomize_(policy, seed)
    return policy


def make_one(model_type: str, out_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    policy = build_randomised(model_type, seed)
    stats = make_stats(seed + 2)
    preprocessor, postprocessor = make_processors(model_type, policy.config, stats)
    io = make_inputs(model_type, lt.TINY_DIMS["vlm"]["vocab_size"], seed + 1, stats, preprocessor)
    rec = record_run(policy, model_type, io)
    # What lerobot's predict_action_chunk + postprocessor return: truncate to the robot's action
    # dims, then unnormalise.
    rec["actions_robot"] = postprocessor(rec["actions"][:, :, :ACTION_DIM].clone()).contiguous()
    again = record_run(policy, model_type, io)
    for k, v in again.items():
        if not torch.equal(v, rec[k]):
            raise RuntimeError(f"lerobot is not deterministic on {k}")

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file():
            stale.unlink()
    policy.save_pretrained(out_dir)  # lerobot's real layout: config.json + model.safetensors
    preprocessor.save_pretrained(out_dir)  # policy_preprocessor.json + normaliser stats
    postprocessor.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json[lt.DIMS_KEY] = lt.dims_from_policy(policy, model_type)
    cfg_path.write_text(json.dumps(cfg_json, indent=4) + "\n")

    # Strict reload into a differently-seeded fresh build must reproduce everything bit for bit.
    fresh = build_randomised(model_type, seed + 1000)
    saved = load_file(str(out_dir / "model.safetensors"))
    fresh.load_state_dict(saved, strict=True)
    reloaded = record_run(fresh, model_type, io)
    for k, v in reloaded.items():
        if not torch.equal(v, rec[k]):
            raise RuntimeError(f"strict reload of the saved weights changes {k}")

    tensors = {**io, **rec}
    meta = {"model_type": model_type, "images_layout": "[camera, batch, 3, 224, 224] uint8",
            "steps_layout": "[step, batch, 50, 32]; x_t is the input of each step"}
    # One metadata key: safetensors writes several keys in hash order, which would make
    # regenerated files differ byte-wise although every tensor is identical.
    save_file(tensors, str(out_dir / "io.safetensors"),
              metadata={"fixture": json.dumps(meta, sort_keys=True)})
    (out_dir / "versions.json").write_text(json.dumps(versions(seed, model_type, policy),
                                                      indent=2) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    names = sorted(p.name for p in out_dir.iterdir())
    print(f"{model_type}: wrote {out_dir} ({total / 1e6:.2f} MB: {', '.join(names)}); "
          f"{len(saved)} weight tensors; |actions|max {rec['actions'].abs().max():.3f}; "
          f"|v0|max {rec['velocities'][0].abs().max():.3f}; "
          f"|prefix|max {rec['prefix_embs'].abs().max():.3f}; reload bit-identical")
    if total > MAX_FIXTURE_BYTES:
        raise RuntimeError(f"{out_dir} is {total} bytes, over the {MAX_FIXTURE_BYTES} budget")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=REPO / "test" / "fixtures")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--only", choices=("pi0", "pi05"), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # fixtures are bit-identical across thread counts; be explicit anyway
    for model_type in ("pi0", "pi05"):
        if args.only in (None, model_type):
            make_one(model_type, args.out_root / f"lerobot_{model_type}", args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
