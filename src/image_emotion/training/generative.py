"""Training and scoring seed 001's generative model on frozen encoder features (what its stages share).

``Examples`` holds one row per (image, emotion model): the image's encoder features, the emotion model asked,
the label's class id in it and its target distribution (eq. 4 / votes, params ``emotions``). A set of the
main set's label set adds its binary view (``generative.binary_view``), so one image can be two examples.

The objective of one batch, mixing emotion models, is ``(1 - λ)·NLL(gold template) + λ·CE(distribution,
softmax over the labels' template log-likelihoods)`` with ``λ = generative.distribution_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from image_emotion.config import EmotionsConfig, GenerativeConfig
from image_emotion.data.emotions import BINARY, get_label_set
from image_emotion.data.torch_data import PreparedDataset, preprocess
from image_emotion.files import load_checkpoint, save_checkpoint
from image_emotion.models.generative import (
    GenerativeEmotionModel,
    build_decoder,
    build_encoder,
    encoder_image_size,
)
from image_emotion.models.templates import get_template
from image_emotion.training.progress import progress


@dataclass
class Examples:
    """``N`` examples: ``features`` ``(N, D)``, the emotion model of each row, class ids ``(N,)`` in it, target
    distributions (one ``(C_m,)`` tensor a row), split names, and the (set, image row) each comes from."""

    features: Tensor
    emotion_models: list[str]
    labels: Tensor
    distributions: list[Tensor]
    splits: np.ndarray
    sources: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: Sequence[int] | np.ndarray) -> Examples:
        rows = np.asarray(rows, dtype=np.int64)
        return Examples(
            self.features[torch.as_tensor(rows)],
            [self.emotion_models[i] for i in rows],
            self.labels[torch.as_tensor(rows)],
            [self.distributions[i] for i in rows],
            self.splits[rows],
            [self.sources[i] for i in rows],
        )

    def split(self, name: str) -> Examples:
        return self.select(np.flatnonzero(self.splits == name))

    def of_model(self, emotion_model: str) -> Examples:
        return self.select([i for i, m in enumerate(self.emotion_models) if m == emotion_model])

    @property
    def models(self) -> list[str]:
        """The emotion models present, in first-seen order."""
        return list(dict.fromkeys(self.emotion_models))


def new_model(cfg: GenerativeConfig, seed: int, encoder: nn.Module | None = None) -> GenerativeEmotionModel:
    """A model of ``cfg`` with mapping (and a from-scratch BART) drawn from ``seed``; ``encoder`` reuses a built
    (frozen) encoder instead of loading ``cfg.encoder`` again."""
    torch.manual_seed(seed)
    encoder = encoder if encoder is not None else build_encoder(cfg.encoder, cfg.encoder_weights, cfg.image_size)
    bart, tokenizer = build_decoder(cfg.decoder_weights, cfg.d_model, cfg.layers, cfg.heads, cfg.dropout)
    size = encoder_image_size(encoder, cfg.image_size)
    return GenerativeEmotionModel(encoder, bart, tokenizer, cfg.prefix_length, cfg.mapping_hidden, size)


@torch.no_grad()
def encode_dataset(model: GenerativeEmotionModel, data: PreparedDataset, batch_size: int = 32) -> Tensor:
    """Encoder features of every image of ``data`` ``(N, D)``, decoded and encoded a batch at a time."""
    model.encoder.eval()
    device = next(model.parameters()).device
    paths = list(data.manifest["path"])
    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack(
            [
                preprocess(data.image(p), model.image_size, model.image_mean, model.image_std)
                for p in paths[start : start + batch_size]
            ]
        )
        out.append(model.encode_images(batch.to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0, model.encoder.output_dim)


def load_sets(prepared: Path, sets_dir: Path, names: Sequence[str]) -> dict[str, PreparedDataset]:
    """The main set (``main``, first) and each named set prepared under ``sets_dir`` (``generative.sets``)."""
    return {"main": PreparedDataset.load(prepared), **{name: PreparedDataset.load(sets_dir / name) for name in names}}


def binary_distribution(distribution: Tensor, label_set: str) -> Tensor | None:
    """A distribution over ``label_set`` folded onto (negative, positive); labels without a polarity dropped.
    ``None`` when no mass is left."""
    labels = get_label_set(label_set)
    out = torch.zeros(2)
    for p, label in zip(distribution.tolist(), labels.labels, strict=True):
        polarity = labels.polarity_or_none(label)
        if polarity is not None:
            out[BINARY.index(polarity)] += p
    return out / out.sum() if out.sum() > 0 else None


def build_examples(
    sets: dict[str, tuple[PreparedDataset, Tensor]], emotions: EmotionsConfig, binary_view: bool
) -> Examples:
    """The examples of every set ``name -> (prepared data, features (N, D))``: each image in its own label set
    and, with ``binary_view``, as positive/negative (images whose label has no polarity are left out there)."""
    feats, models, labels, dists, splits, sources = [], [], [], [], [], []
    for name, (data, features) in sets.items():
        label_set = get_label_set(data.label_set)
        targets = data.distributions(emotions.dominant_probability, emotions.target)
        for i, (label, split) in enumerate(zip(data.manifest["label"], data.manifest["split"], strict=True)):
            views = [(data.label_set, label_set.index(label), targets[i])]
            polarity = label_set.polarity_or_none(label)
            if binary_view and data.label_set != "binary" and polarity is not None:
                folded = binary_distribution(targets[i], data.label_set)
                polar = BINARY.index(polarity)
                views.append(("binary", polar, folded if folded is not None else torch.eye(2)[polar]))
            for model_name, class_id, dist in views:
                feats.append(features[i])
                models.append(model_name)
                labels.append(class_id)
                dists.append(dist)
                splits.append(split)
                sources.append((name, i))
    return Examples(
        torch.stack(feats), models, torch.tensor(labels, dtype=torch.long), dists, np.array(splits), sources
    )


def batch_loss(model: GenerativeEmotionModel, batch: Examples, distribution_weight: float) -> Tensor:
    """``(1 - λ)·NLL(gold templates) + λ·CE(target distributions, label softmax)`` of one mixed batch; the NLL is
    per token. With ``λ > 0`` every label's template is scored and the gold one's score gives the NLL too."""
    device = next(model.parameters()).device
    states, mask = model.encoder_states(batch.features.to(device), batch.emotion_models)
    if distribution_weight == 0:
        texts = [
            get_template(m).text(get_template(m).labels[c])
            for m, c in zip(batch.emotion_models, batch.labels.tolist(), strict=True)
        ]
        return model.template_nll(states, mask, texts)
    gold_logp, tokens, ce = states.new_zeros(()), 0, states.new_zeros(())
    for name in batch.models:
        rows = [i for i, m in enumerate(batch.emotion_models) if m == name]
        index = torch.as_tensor(rows, device=device)
        scores = model.score_labels(states[index], mask[index], name)  # (B_m, C) summed log-likelihoods
        gold = batch.labels[rows].to(device)
        gold_logp = gold_logp + scores.gather(1, gold[:, None]).sum()
        lengths = model.template_lengths(name)
        tokens += int(sum(lengths[c] for c in gold.tolist()))
        target = torch.stack([batch.distributions[i] for i in rows]).to(device)
        ce = ce - (target * scores.log_softmax(-1)).sum()
    return (1 - distribution_weight) * (-gold_logp / tokens) + distribution_weight * ce / len(batch)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The trained weights (mapping and BART; the frozen encoder's are left out)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


def train_generative_model(
    model: GenerativeEmotionModel,
    train: Examples,
    cfg: GenerativeConfig,
    *,
    seed: int,
    steps: int | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """AdamW on the mapping and BART (the encoder stays frozen) for ``cfg.epochs`` epochs, or, when ``steps`` is
    given (the low-resource runs), the fewest whole epochs that make at least ``steps`` steps. With
    ``checkpoint``, the state after each epoch is saved there and a checkpoint of the same ``fingerprint`` is
    resumed. Returns the mean loss of each epoch."""
    params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    epochs = cfg.epochs if steps is None else math.ceil(steps / per_epoch)
    losses: list[float] = []
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None and state.get("fingerprint") == fingerprint:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        losses = list(state["losses"])
        torch.set_rng_state(state["rng"])  # dropout draws on as if never interrupted
    model.train()
    model.encoder.eval()
    for epoch in progress(range(len(losses), epochs), "generative model", total=epochs, initial=len(losses)):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total = 0.0
        for start in range(0, len(train), cfg.batch_size):
            batch = train.select(order[start : start + cfg.batch_size].numpy())
            loss = batch_loss(model, batch, cfg.distribution_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(train))
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "fingerprint": fingerprint,
                    "model": trainable_state(model),
                    "optimizer": optimizer.state_dict(),
                    "losses": losses,
                    "rng": torch.get_rng_state(),
                },
            )
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def label_probabilities(model: GenerativeEmotionModel, features: Tensor, emotion_model: str, batch: int = 64) -> Tensor:
    """The model's distribution over ``emotion_model``'s labels for each feature row ``(N, D)``: ``(N, C)``."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        model.label_log_likelihoods(features[s : s + batch].to(device), emotion_model).softmax(-1).cpu()
        for s in range(0, len(features), batch)
    ]
    return torch.cat(out) if out else torch.empty(0, len(get_label_set(emotion_model)))


def accuracy_by_model(model: GenerativeEmotionModel, examples: Examples) -> dict[str, float]:
    """Accuracy of the template ranking (the most likely label), per emotion model of ``examples``."""
    out = {}
    for name in examples.models:
        part = examples.of_model(name)
        predicted = label_probabilities(model, part.features, name).argmax(1)
        out[name] = float((predicted == part.labels).float().mean())
    return out


@torch.no_grad()
def generated_labels(
    model: GenerativeEmotionModel, features: Tensor, emotion_model: str, *, constrained: bool, num_beams: int,
    batch: int = 64,
) -> list[int | None]:  # fmt: skip
    """The class id each generated text spells (``None``: not a template of ``emotion_model``)."""
    device = next(model.parameters()).device
    out: list[int | None] = []
    for s in range(0, len(features), batch):
        labels, _ = model.generate(
            features[s : s + batch].to(device), emotion_model, constrained=constrained, num_beams=num_beams
        )
        out.extend(labels)
    return out


def few_shot_rows(examples: Examples, shots: int, seed: int) -> np.ndarray:
    """Rows of the examples of ``shots`` training images a class of each set (every view of those images):
    drawn with ``seed`` from the images whose own label set's label is that class."""
    rng = np.random.default_rng(seed)
    own: dict[str, str] = {}  # the label set each set was read in (binary only for a binary dataset)
    for (source, _), model_name in zip(examples.sources, examples.emotion_models, strict=True):
        if model_name != "binary":
            own.setdefault(source, model_name)
    groups: dict[tuple[str, int], set[int]] = {}
    for (source, image), model_name, label in zip(
        examples.sources, examples.emotion_models, examples.labels.tolist(), strict=True
    ):
        if model_name == own.get(source, "binary"):
            groups.setdefault((source, label), set()).add(image)
    chosen: set[tuple[str, int]] = set()
    for key in sorted(groups):
        images = sorted(groups[key])
        picks = rng.choice(len(images), size=min(shots, len(images)), replace=False)
        chosen.update((key[0], images[int(i)]) for i in picks)
    return np.array([i for i, src in enumerate(examples.sources) if src in chosen], dtype=np.int64)


def fit_probe(features: Tensor, labels: Tensor, num_classes: int, *, seed: int, steps: int = 300) -> nn.Module:
    """The baseline of one emotion model: LayerNorm + linear softmax classifier on the same frozen features,
    full-batch Adam (lr 0.01, weight decay 1e-4)."""
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.LayerNorm(features.shape[1]), nn.Linear(features.shape[1], num_classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(features), labels).backward()
        optimizer.step()
    return probe.eval()
