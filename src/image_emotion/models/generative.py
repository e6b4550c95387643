"""Seed 001 (UGRIE): an image encoder, a learned mapping into a seq2seq model's embedding space, and BART
generating the filled label template of the emotion model a prompt asks for.

Shapes: images ``(B, 3, S, S)`` -> encoder features ``(B, D)`` -> mapping -> prefix ``(B, P, d_model)``;
BART's encoder reads ``[prefix ; prompt tokens]`` ``(B, P + T_p, d_model)``; its decoder scores or writes
the template ``(B, T)``.

- **Encoder** (``generative.encoder``): CLIP's vision tower (``transformers.CLIPVisionModel``, its pooled
  output; weights from a local directory, or a small random configuration built here for tests), or the
  project's EfficientNet-Lite0 (ImageNet weights that ship offline; the embedded default) standing in for it.
- **Mapping**: LayerNorm -> Linear -> GELU -> Linear to ``P`` prefix vectors (ClipCap's MLP mapping).
- **Decoder**: ``BartForConditionalGeneration`` from a local directory with its tokenizer, or a small BART
  built from ``generative`` params with the word-level template vocabulary (``models.templates``).

Each label's score is the log-likelihood of its filled template (summed over its tokens), so the model gives
a distribution over the labels of any emotion model (``label_log_likelihoods``) and predicts the best one;
``generate`` writes text with beam search constrained to the emotion model's templates (a prefix trie).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from image_emotion.errors import ConfigError
from image_emotion.files import atomic_dir, load_checkpoint
from image_emotion.models.backbones import LITE_MEAN, LITE_STD, build_trunk
from image_emotion.models.templates import EOS, PAD, get_template, word_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_KIND = "generative_emotion_model"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("seed 001 needs the transformers library: pip install -e '.[gen]' (setup.sh does)") from None
    transformers.logging.set_verbosity_error()
    return transformers


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0's trunk to its ``head`` tap, average-pooled: ``(B, 3, S, S)`` -> ``(B, 1280)``."""

    output_dim = 1280
    mean, std = LITE_MEAN, LITE_STD

    def __init__(self, weights: str | Path | None) -> None:
        super().__init__()
        self.net = build_trunk("efficientnet_lite0", weights, ("head",))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)["head"].mean(dim=(2, 3))

    def settings(self) -> dict[str, Any]:
        return {"kind": "efficientnet_lite0"}


class ClipEncoder(nn.Module):
    """CLIP's vision tower: ``(B, 3, S, S)`` -> its pooled output ``(B, hidden_size)``."""

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.output_dim = int(vision.config.hidden_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.vision(pixel_values=images).pooler_output

    def settings(self) -> dict[str, Any]:
        return {"kind": "clip", "config": self.vision.config.to_dict()}


def tiny_clip_config(image_size: int):
    """A small random CLIP vision configuration (tests and runs without CLIP weights)."""
    return _transformers().CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=max(4, image_size // 8), projection_dim=64,
    )  # fmt: skip


def build_encoder(kind: str, weights: str | None, image_size: int) -> nn.Module:
    """The image encoder of ``generative.encoder``: Lite0 (``weights`` imagenet | .pth | None) or CLIP
    (``weights`` a local ``from_pretrained`` directory | None for a small random one of ``image_size``)."""
    if kind == "efficientnet_lite0":
        return Lite0Encoder(weights)
    if kind != "clip":
        raise ConfigError(f"generative.encoder must be efficientnet_lite0 or clip, got {kind!r}")
    tf = _transformers()
    if weights is None:
        return ClipEncoder(tf.CLIPVisionModel(tiny_clip_config(image_size)))
    path = Path(weights)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not a CLIP checkpoint directory (no config.json); give the directory you saved")
    return ClipEncoder(tf.CLIPVisionModel.from_pretrained(path, local_files_only=True))


def encoder_image_size(encoder: nn.Module, default: int) -> int:
    """The input size the encoder needs: CLIP's configured size, else ``default``."""
    return int(encoder.vision.config.image_size) if isinstance(encoder, ClipEncoder) else default


def build_decoder(
    weights: str | None, d_model: int, layers: int, heads: int, dropout: float = 0.0
) -> tuple[nn.Module, Any]:
    """BART and its tokenizer: from a local ``from_pretrained`` directory, or a small random BART over the
    word-level template vocabulary (``d_model``, ``layers`` encoder and decoder layers, ``heads``, ``dropout``)."""
    tf = _transformers()
    if weights is not None:
        path = Path(weights)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a BART checkpoint directory (no config.json); give a saved BART")
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: no tokenizer beside the BART weights ({exc})") from None
        return tf.BartForConditionalGeneration.from_pretrained(path, local_files_only=True), tokenizer
    tokenizer = word_tokenizer()
    config = tf.BartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_position_embeddings=128, dropout=dropout,
        attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS, decoder_start_token_id=EOS, forced_bos_token_id=None,
    )  # fmt: skip
    return tf.BartForConditionalGeneration(config), tokenizer


class PrefixMapping(nn.Module):
    """Image features ``(B, D)`` -> ``P`` prefix vectors in the decoder model's space ``(B, P, d_model)``."""

    def __init__(self, in_dim: int, d_model: int, prefix_length: int, hidden: int) -> None:
        super().__init__()
        self.prefix_length, self.d_model = prefix_length, d_model
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, prefix_length * d_model)
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).view(len(features), self.prefix_length, self.d_model)


class GenerativeEmotionModel(nn.Module):
    """Encoder -> mapping -> BART, answering any emotion model of ``models.templates`` by its template."""

    def __init__(
        self, encoder: nn.Module, bart: nn.Module, tokenizer: Any, prefix_length: int, mapping_hidden: int,
        image_size: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.bart, self.tokenizer = encoder, bart, tokenizer
        self.mapping = PrefixMapping(encoder.output_dim, bart.config.d_model, prefix_length, mapping_hidden)
        self.image_size = image_size
        self.image_mean, self.image_std = encoder.mean, encoder.std
        self.pad_id = int(bart.config.pad_token_id)
        self._ids: dict[str, Tensor] = {}

    # --- tokens -------------------------------------------------------------------------------------------

    def _token_ids(self, text: str) -> Tensor:
        """``text`` as token ids ``(T,)`` with the tokenizer's special tokens (cached)."""
        if text not in self._ids:
            self._ids[text] = torch.tensor(self.tokenizer(text)["input_ids"], dtype=torch.long)
        return self._ids[text]

    def _padded(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids ``(N, T)`` padded with the pad id, and the mask of real tokens ``(N, T)``."""
        ids = [self._token_ids(t) for t in texts]
        out = torch.full((len(ids), max(len(x) for x in ids)), self.pad_id, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
        return out, out != self.pad_id

    def candidates(self, emotion_model: str) -> list[list[int]]:
        """The token ids of every label's filled template, in class-id order."""
        return [self._token_ids(t).tolist() for t in get_template(emotion_model).texts()]

    def template_lengths(self, emotion_model: str) -> list[int]:
        """Tokens in each label's filled template (what the per-token NLL divides by)."""
        return [len(c) for c in self.candidates(emotion_model)]

    # --- forward pieces -----------------------------------------------------------------------------------

    def encode_images(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` normalised images -> encoder features ``(B, D)``."""
        return self.encoder(images)

    def encoder_states(self, features: Tensor, emotion_models: Sequence[str]) -> tuple[Tensor, Tensor]:
        """BART's encoder over ``[prefix(features) ; prompt of each row's emotion model]``: hidden states
        ``(B, P + T_p, d_model)`` and their attention mask ``(B, P + T_p)``."""
        device = features.device
        prompts, prompt_mask = self._padded([get_template(m).prompt for m in emotion_models])
        prompts, prompt_mask = prompts.to(device), prompt_mask.to(device)
        encoder = self.bart.get_encoder()
        prefix = self.mapping(features)
        embeds = torch.cat([prefix, encoder.embed_tokens(prompts)], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=device), prompt_mask.long()], dim=1)
        return encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask

    def sequence_log_likelihood(self, states: Tensor, mask: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
        """Sum of ``log p(token)`` of each target sequence ``(N, T)`` given encoder states ``(N, L, d)``: ``(N,)``."""
        from transformers.models.bart.modeling_bart import shift_tokens_right

        decoder_input = shift_tokens_right(targets, self.pad_id, int(self.bart.config.decoder_start_token_id))
        logits = self.bart(
            encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=decoder_input
        ).logits  # (N, T, V)
        token_logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_logp * target_mask).sum(-1)

    def template_nll(self, states: Tensor, mask: Tensor, texts: Sequence[str]) -> Tensor:
        """Mean per-token negative log-likelihood of ``texts`` (one filled template a row of the encoder
        ``states`` ``(B, L, d)``): a scalar."""
        targets, target_mask = (t.to(states.device) for t in self._padded(texts))
        return -self.sequence_log_likelihood(states, mask, targets, target_mask).sum() / target_mask.sum()

    def score_labels(self, states: Tensor, mask: Tensor, emotion_model: str) -> Tensor:
        """``log p(template of label c | encoder states)`` for every label ``c`` of ``emotion_model``: ``(B, C)``."""
        texts = get_template(emotion_model).texts()
        b, c = len(states), len(texts)
        targets, target_mask = (t.to(states.device) for t in self._padded(texts))
        return self.sequence_log_likelihood(
            states.repeat_interleave(c, 0), mask.repeat_interleave(c, 0), targets.repeat(b, 1), target_mask.repeat(b, 1)
        ).view(b, c)

    def label_log_likelihoods(self, features: Tensor, emotion_model: str) -> Tensor:
        """``log p(template of label c | image, prompt)`` for every label ``c`` of ``emotion_model``, from encoder
        features ``(B, D)``: ``(B, C)``. Softmax over ``C`` is the model's distribution over the labels."""
        return self.score_labels(*self.encoder_states(features, [emotion_model] * len(features)), emotion_model)

    # --- generation ---------------------------------------------------------------------------------------

    def parse(self, ids: Sequence[int], emotion_model: str) -> int | None:
        """The class id whose template ``ids`` (without the decoder start token) spell, else ``None``."""
        ids = list(ids)
        if EOS in ids[1:]:
            ids = ids[: ids.index(EOS, 1) + 1]
        for c, candidate in enumerate(self.candidates(emotion_model)):
            if ids == candidate:
                return c
        return None

    @torch.no_grad()
    def generate(
        self, features: Tensor, emotion_model: str, *, constrained: bool = True, num_beams: int = 2
    ) -> tuple[list[int | None], list[str]]:
        """Write the template for each image ``(B, D)``: the class id it spells (``None`` when the text is
        no template of ``emotion_model``, possible only unconstrained) and the text."""
        tf = _transformers()
        candidates = self.candidates(emotion_model)
        start = int(self.bart.config.decoder_start_token_id)

        def allowed(_batch: int, prefix: Tensor) -> list[int]:
            done = prefix.tolist()[1:]
            nxt = {c[len(done)] for c in candidates if c[: len(done)] == done and len(c) > len(done)}
            return sorted(nxt) or [self.pad_id]

        states, mask = self.encoder_states(features, [emotion_model] * len(features))
        config = tf.GenerationConfig(
            max_new_tokens=max(len(c) for c in candidates) + 2, num_beams=num_beams, do_sample=False,
            decoder_start_token_id=start, eos_token_id=EOS if self.pad_id == PAD else self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id, bos_token_id=None, forced_bos_token_id=None, no_repeat_ngram_size=0,
        )  # fmt: skip
        out = self.bart.generate(
            encoder_outputs=tf.modeling_outputs.BaseModelOutput(last_hidden_state=states),
            attention_mask=mask,
            generation_config=config,
            prefix_allowed_tokens_fn=allowed if constrained else None,
        )
        seqs = [row[1:].tolist() for row in out.cpu()]
        labels = [self.parse(s, emotion_model) for s in seqs]
        return labels, self.tokenizer.batch_decode(out, skip_special_tokens=True)

    # --- persistence --------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What rebuilds this architecture (weights come from the state dict)."""
        return {
            "encoder": self.encoder.settings(),
            "bart_config": self.bart.config.to_dict(),
            "prefix_length": self.mapping.prefix_length,
            "mapping_hidden": self.mapping.net[1].out_features,
            "image_size": self.image_size,
        }


def save_generative_model(out_dir: Path, model: GenerativeEmotionModel, extra: dict[str, Any]) -> None:
    """``out_dir/model.pt`` (state dict, settings, ``extra``) and ``out_dir/tokenizer/``, atomically."""
    reserved = {"kind", "state_dict", "settings"}
    if reserved & set(extra):
        raise ValueError(f"extra keys {sorted(reserved & set(extra))} are reserved by save_generative_model")
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"kind": _KIND, "state_dict": state, "settings": model.settings(), **extra}, tmp / "model.pt")
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "settings.json").write_text(json.dumps({**model.settings(), **extra}, indent=2, default=str))


def load_generative_model(model_dir: str | Path) -> tuple[GenerativeEmotionModel, dict[str, Any]]:
    """A model saved by ``save_generative_model`` (eval mode, CPU) and its saved state; nothing downloaded."""
    model_dir = Path(model_dir)
    state = load_checkpoint(model_dir / "model.pt")
    if state is None:
        raise ConfigError(f"{model_dir}/model.pt: generative model not found; run `image-emotion train-generative`")
    if state.get("kind") != _KIND:
        raise ConfigError(f"{model_dir}/model.pt: not a generative model (saved by save_generative_model)")
    tf = _transformers()
    settings = state["settings"]
    enc = settings["encoder"]
    if enc["kind"] == "clip":
        encoder: nn.Module = ClipEncoder(tf.CLIPVisionModel(tf.CLIPVisionConfig(**enc["config"])))
    else:
        encoder = Lite0Encoder(None)
    bart = tf.BartForConditionalGeneration(tf.BartConfig(**settings["bart_config"]))
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    model = GenerativeEmotionModel(
        encoder, bart, tokenizer, settings["prefix_length"], settings["mapping_hidden"], settings["image_size"]
    )
    model.load_state_dict(state["state_dict"])
    return model.eval(), state
