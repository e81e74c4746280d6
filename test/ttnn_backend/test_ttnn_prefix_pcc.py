"""PrefixEmbeddingTTNN (SigLIP, projector, language embedding) vs torch PrefixEmbedding."""

from __future__ import annotations

import pytest
import torch
from conftest import download, reference, runtime_config, ttnn, upload
from pi0_ttnn_node.embedded import adversarial_inputs
from pcc import assert_pcc

from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

COMPONENTS = ("embed_images", "embed_language", "embed_prefix")
CASES = [pytest.param(mt, size, dt, id=f"{mt}-{size}-{dt}") for mt in ("pi0", "pi05")
         for size in ("tiny", "mid") for dt in ("bfloat16", "bfloat8_b")]


def _device_inputs(tt, inputs):
    """The prefix inputs as sample_actions uploads them (images stacked row-major over cameras)."""
    images = torch.stack(inputs["images"], dim=1).flatten(0, 1)
    img_masks = torch.stack(inputs["img_masks"], dim=1).float()
    return dict(
        images=upload(tt, images, layout=ttnn.ROW_MAJOR_LAYOUT),
        img_masks=upload(tt, img_masks),
        lang_tokens=upload(tt, inputs["lang_tokens"].to(torch.int32), dtype=ttnn.uint32,
                           layout=ttnn.ROW_MAJOR_LAYOUT),
        lang_masks=upload(tt, inputs["lang_masks"].float()))


@pytest.mark.parametrize("model_type,size,weight_dtype", CASES)
def test_prefix_components_match_torch(tt, model_type, size, weight_dtype):
    cfg, sd, model = reference(model_type, size)
    dut = PI0ModelTTNN(cfg, sd, tt.device, runtime_config(tt, weight_dtype))
    inputs = adversarial_inputs(cfg)
    dev = _device_inputs(tt, inputs)
    label = f"{model_type}-{size}"
    with torch.no_grad():
        ref_images = model.prefix.embed_images(inputs["images"], inputs["img_masks"])
        ref_lang = model.prefix.embed_language(inputs["lang_tokens"])
        ref_embs, ref_pad, ref_att = model.embed_prefix(inputs["images"], inputs["img_masks"],
                                                        inputs["lang_tokens"], inputs["lang_masks"])
    images = download(dut.prefix.embed_images(dev["images"], dev["img_masks"]))
    assert_pcc(images, ref_images, "embed_images", weight_dtype, label)
    masked = images[0, cfg.vision.num_patches:2 * cfg.vision.num_patches]
    assert torch.count_nonzero(masked) == 0, "tokens of a masked camera must be zero, as in torch"
    lang = download(dut.prefix.embed_language(dev["lang_tokens"]))
    assert_pcc(lang, ref_lang, "embed_language", weight_dtype, label)
    embs, pad, att = dut.embed_prefix(dev["images"], dev["img_masks"], dev["lang_tokens"],
                                      dev["lang_masks"])
    assert_pcc(download(embs), ref_embs, "embed_prefix", weight_dtype, label)
    assert torch.equal(download(pad).bool(), ref_pad)
    assert torch.equal(download(att).bool(), ref_att)


def test_language_embedding_is_scaled_by_sqrt_width(tt):
    cfg, sd, _ = reference("pi0", "tiny")
    dut = PI0ModelTTNN(cfg, sd, tt.device, runtime_config(tt, "bfloat16"))
    tokens = torch.tensor([[3, 7, 11]], dtype=torch.int32)
    out = download(dut.prefix.embed_language(upload(tt, tokens, dtype=ttnn.uint32,
                                                    layout=ttnn.ROW_MAJOR_LAYOUT)))
    table = sd["language_model.embed_tokens.weight"]
    expected = table[tokens.long()] * cfg.vlm.width ** 0.5
    assert torch.allclose(out, expected, rtol=2e-2, atol=2e-2)
