"""Losses of seed 000 §4.3: L_cls (eq. 7), L_ed (eq. 8), L_multi (eq. 6) and L_p (eq. 10); and of seed 002
(Yang et al., deep metric learning): the sentiment constraint E_sml (eq. 4) and the ablation's triplet (eq. 2)
and centre losses; their joint loss with softmax (eq. 7) is ``training.metric.MetricObjective``.

Seed 000's losses take ``logits`` of shape ``(B, C)`` (the activations ``a_i`` of the last FC layer) and
return the batch mean, a scalar tensor.

Seed 002's metric losses take ``embeddings (B, D)`` and ``labels (B,)`` and return the mean over the triplets
sampled in the batch. ``D`` is eq. 1, the squared Euclidean distance of unit-norm vectors ("the Euclidean
distance D of their texture representation with unit norm", seed line 174; "normalized to unit l2 norm",
line 345), so embeddings are L2-normalised inside. The sentiment constraint weights it by Mikels' wheel,
seed lines 157-159: "we define D*(xi, xj) = θD(xi, xj), θ ∝ 1/dis(yi, yj), where dis(yi, yj) denotes 1 + the
number of steps required to reach one emotion from another by the Mikels' wheel" (the extracted text reads
``θ ∝ dis(y1i ,yj )``: the fraction 1/dis flattened). We take the constant of proportionality as 1, so
``D* = D / dis`` and ``D* = D`` within an emotion. Sampling (seed lines 680-686, after FaceNet): ``random``,
``hard`` or ``semi-hard`` (the paper's), drawn through an optional ``torch.Generator``.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from image_emotion.data.emotions import distance_matrix, get_label_set, mikels_distance_matrix
from image_emotion.errors import ConfigError


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 7, ``L_cls = -sum_i y_i log p_i`` with one-hot ``y`` from ``labels (B,)``."""
    return F.cross_entropy(logits, labels)


def distribution_loss(logits: Tensor, target: Tensor, form: str = "ce") -> Tensor:
    """Eq. 8, ``L_ed = -sum_i f(i) log p_i`` against ``target (B, C)`` (each row sums to 1).

    ``form="kl"`` subtracts the target's entropy, giving ``KL(f || p)`` (0 when ``p = f``); the gradient
    with respect to ``logits`` is the same (``p - f``), which is why the paper calls eq. 8 its KL loss.
    """
    log_p = F.log_softmax(logits, dim=-1)
    ce = -(target * log_p).sum(dim=-1)
    if form == "kl":
        ce = ce + (target * torch.log(target.clamp_min(1e-12))).sum(dim=-1)
    elif form != "ce":
        raise ConfigError(f"distribution loss form must be 'ce' or 'kl', got {form!r}")
    return ce.mean()


def check_lambda(lam: float) -> None:
    """λ of eq. 6 weighs two losses: it must lie in [0, 1]; ``ConfigError`` if not."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"λ (lambda) must be in [0, 1], got {lam}")


def multi_task_loss(logits: Tensor, labels: Tensor, target: Tensor, lam: float) -> Tensor:
    """Eq. 6, ``L_multi = (1 - λ) L_cls + λ L_ed``; λ = 0 is L_cls, λ = 1 is L_ed."""
    check_lambda(lam)
    return (1.0 - lam) * classification_loss(logits, labels) + lam * distribution_loss(logits, target)


def probability_loss(logits: Tensor, labels: Tensor, p_star: Tensor) -> Tensor:
    """Eq. 10, ``L_p = -sum_i y_i log p_i^θ`` with ``p_i^θ = softmax(p*² · a)_i``.

    ``p_star (B,)`` is each image's label probability (the dominant vote share): a less certain label
    flattens the softmax and so contributes less gradient (eq. 11's reading of it).
    """
    if p_star.shape != labels.shape:
        raise ConfigError(f"p_star must have one value per image {tuple(labels.shape)}, got {tuple(p_star.shape)}")
    return F.cross_entropy(logits * (p_star**2).unsqueeze(-1), labels)


LOSSES = ("cls", "ed", "multi", "p")


def emotion_loss(name: str, logits: Tensor, labels: Tensor, target: Tensor, p_star: Tensor, lam: float) -> Tensor:
    """The loss called ``name`` (``cls`` | ``ed`` | ``multi`` | ``p``), for training loops and sweeps."""
    if name == "cls":
        return classification_loss(logits, labels)
    if name == "ed":
        return distribution_loss(logits, target)
    if name == "multi":
        return multi_task_loss(logits, labels, target, lam)
    if name == "p":
        return probability_loss(logits, labels, p_star)
    raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


# --- Seed 002 (Yang et al., deep metric learning for affective images) -------------------------------------

SAMPLINGS = ("random", "hard", "semi-hard")


class Triplets(NamedTuple):
    """Batch indices of sampled triplets ``(a, p, n)``, each ``(K,)``."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class SentimentTriplets(NamedTuple):
    """Batch indices of sampled sentiment quadruples, each ``(K,)``.

    Row ``k`` gives the first constraint ``(anchor, positive, related)`` and the second
    ``(anchor, second_related, negative)``. ``second_related`` equals ``related`` except under hard sampling,
    where the first constraint takes the nearest related image and the second the farthest.
    """

    anchor: Tensor
    positive: Tensor
    related: Tensor
    negative: Tensor
    second_related: Tensor


@cache
def _label_tables(label_set: str) -> tuple[tuple[tuple[float, ...], ...], tuple[int, ...]]:
    """``dis`` between the classes of ``label_set`` and each class's polarity (+1, -1, 0 for none)."""
    labels = get_label_set(label_set)
    dis = mikels_distance_matrix() if label_set == "mikels8" else distance_matrix(label_set)
    polarity = []
    for name in labels.labels:
        try:
            polarity.append(1 if labels.polarity(name) == "positive" else -1)
        except ConfigError:  # emotion6's neutral
            polarity.append(0)
    return tuple(tuple(float(v) for v in row) for row in dis), tuple(polarity)


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.ndim != 2:
        raise ConfigError(f"embeddings must have shape (B, D), got {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ConfigError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class ids, got dtype {labels.dtype}")


def _check_choice(sampling: str, **margins: float) -> None:
    if sampling not in SAMPLINGS:
        raise ConfigError(f"unknown triplet sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    for name, value in margins.items():
        if not value > 0:
            raise ConfigError(f"margin {name} must be > 0 (seed 002 eq. 2-3), got {value}")


def _zero(embeddings: Tensor) -> Tensor:
    """A zero loss that keeps ``embeddings`` in the graph, so ``.backward()`` works and gives zero gradients."""
    return (embeddings * 0.0).sum()


def _squared_distances(embeddings: Tensor) -> Tensor:
    """Eq. 1 (seed lines 174-178), ``D = ||SV_i - SV_j||²`` of the L2-normalised ``embeddings (B, D)``. ``(B, B)``."""
    unit = F.normalize(embeddings, dim=1)
    return (2.0 - 2.0 * unit @ unit.T).clamp_min(0.0)


def sentiment_distances(embeddings: Tensor, labels: Tensor, label_set: str = "mikels8") -> Tensor:
    """Seed 002's ``D*(x_i, x_j) = D(x_i, x_j) / dis(y_i, y_j)`` for every pair of the batch. Shape ``(B, B)``.

    ``D`` is eq. 1 (squared Euclidean distance of the L2-normalised embeddings) and ``dis = 1 + steps`` on
    Mikels' wheel (``image_emotion.data.emotions``), so same-emotion pairs keep ``D* = D``.
    """
    _check_batch(embeddings, labels)
    dis_table, _ = _label_tables(label_set)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(dis_table)):
        raise ConfigError(f"labels must be {label_set} class ids in 0..{len(dis_table) - 1}, got {labels.tolist()}")
    dis = torch.tensor(dis_table, dtype=embeddings.dtype, device=embeddings.device)[labels][:, labels]
    return _squared_distances(embeddings) / dis


def _uniform(pool: Tensor, generator: torch.Generator | None) -> Tensor:
    """One column of each row of ``pool (K, B)``, uniformly among its True entries (arbitrary if none). ``(K,)``."""
    device = generator.device if generator is not None else pool.device
    scores = torch.rand(pool.shape, generator=generator, device=device).to(pool.device)
    return scores.masked_fill(~pool, -1.0).argmax(dim=1)


def _pick_farther(
    ref: Tensor, cand: Tensor, valid: Tensor, margin: float, sampling: str, generator: torch.Generator | None
) -> Tensor:
    """For the constraint ``ref + margin < cand``, one ``valid`` column of each row of ``cand (K, B)``. ``(K,)``.

    ``ref (K,)`` is the distance that must be the smaller; every row of ``valid (K, B)`` has a True entry.
    hard: the nearest candidate. random: uniformly among the candidates that violate the constraint ("randomly
    selecting the violated triplets", seed line 681), else among all (loss 0). semi-hard (FaceNet's, "randomly
    selected", seed line 683): uniformly among ``ref < cand < ref + margin``; without one, the fallback of
    TensorFlow's ``triplet_semihard_loss`` (the FaceNet paper states none): the nearest candidate farther than
    ``ref`` (its loss is 0) or, when none is farther, the farthest candidate.
    """
    inf = torch.finfo(cand.dtype).max
    if sampling == "hard":
        return cand.masked_fill(~valid, inf).argmin(dim=1)
    ref = ref.unsqueeze(1)
    if sampling == "random":
        violated = valid & (cand < ref + margin)
        return _uniform(torch.where(violated.any(dim=1, keepdim=True), violated, valid), generator)
    farther = valid & (cand > ref)
    band = farther & (cand < ref + margin)
    fallback = torch.where(
        farther.any(dim=1),
        cand.masked_fill(~farther, inf).argmin(dim=1),
        cand.masked_fill(~valid, -inf).argmax(dim=1),
    )
    return torch.where(band.any(dim=1), _uniform(band, generator), fallback)


def _hardest(dist: Tensor, valid: Tensor, farthest: bool) -> Tensor:
    """The farthest (or nearest) ``valid`` column of each row of ``dist (K, B)``. ``(K,)``."""
    inf = torch.finfo(dist.dtype).max
    if farthest:
        return dist.masked_fill(~valid, -inf).argmax(dim=1)
    return dist.masked_fill(~valid, inf).argmin(dim=1)


def _sentiment_masks(labels: Tensor, label_set: str) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean ``(B, B)`` masks: positive (same emotion), related (other emotion, same polarity), negative."""
    _, polarity_table = _label_tables(label_set)
    polarity = torch.tensor(polarity_table, device=labels.device)[labels]
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    has = (polarity != 0).unsqueeze(1) & (polarity != 0).unsqueeze(0)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    related = ~same & has & (polarity.unsqueeze(1) == polarity.unsqueeze(0))
    negative = has & (polarity.unsqueeze(1) == -polarity.unsqueeze(0))
    return positive, related, negative


def _sample_sentiment(
    dist: Tensor,
    labels: Tensor,
    label_set: str,
    alpha1: float,
    alpha2: float,
    sampling: str,
    generator: torch.Generator | None,
) -> SentimentTriplets:
    """Sentiment quadruples from the detached ``D*`` matrix ``dist (B, B)``."""
    positive, related, negative = _sentiment_masks(labels, label_set)
    usable = related.any(dim=1) & negative.any(dim=1)
    if sampling == "hard":
        a = (usable & positive.any(dim=1)).nonzero().squeeze(1)
        d = dist[a]
        p = _hardest(d, positive[a], farthest=True)
        r_near = _hardest(d, related[a], farthest=False)
        r_far = _hardest(d, related[a], farthest=True)
        n = _hardest(d, negative[a], farthest=False)
        return SentimentTriplets(a, p, r_near, n, r_far)
    a, p = (positive & usable.unsqueeze(1)).nonzero(as_tuple=True)
    d = dist[a]
    r = _pick_farther(dist[a, p], d, related[a], alpha1, sampling, generator)
    n = _pick_farther(dist[a, r], d, negative[a], alpha2, sampling, generator)
    return SentimentTriplets(a, p, r, n, r)


def sample_sentiment_triplets(
    embeddings: Tensor,
    labels: Tensor,
    label_set: str = "mikels8",
    alpha1: float = 0.2,
    alpha2: float = 0.1,
    sampling: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> SentimentTriplets:
    """Sentiment quadruples ``(a, p, r, n)`` of the batch ``embeddings (B, D)``, ``labels (B,)``, chosen on ``D*``.

    An anchor needs a positive (same emotion), a related image (other emotion, same polarity) and a negative
    (opposite polarity); classes without a polarity (emotion6's neutral) are neither related nor negative.
    ``random`` / ``semi-hard``: every (anchor, positive) pair (seed 002: "all the positive images are
    considered"), ``r`` picked for ``D*(a,p) + α1 < D*(a,r)``, then ``n`` for ``D*(a,r) + α2 < D*(a,n)`` (see
    ``_pick_farther``). ``hard``: one row per anchor with the farthest positive, the nearest related image for
    the first constraint, the farthest for the second, and the nearest negative.
    """
    _check_choice(sampling, alpha1=alpha1, alpha2=alpha2)
    with torch.no_grad():
        dist = sentiment_distances(embeddings.detach(), labels, label_set)
    return _sample_sentiment(dist, labels, label_set, alpha1, alpha2, sampling, generator)


def sentiment_constraint_loss(
    embeddings: Tensor,
    labels: Tensor,
    label_set: str = "mikels8",
    alpha1: float = 0.2,
    alpha2: float = 0.1,
    sampling: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Seed 002 eq. 4, ``E_sml``: mean over the sampled quadruples of
    ``[D*(a,p) - D*(a,r) + α1]_+ + [D*(a,r) - D*(a,n) + α2]_+``.

    ``embeddings (B, D)`` are L2-normalised here (the paper's sentiment vectors have unit norm, seed line 345);
    ``labels (B,)`` are class ids of ``label_set``. Defaults are the paper's (α1 0.2, α2 0.1, semi-hard). A batch
    without a quadruple (one class, no related pair, ...) gives a zero that still backpropagates.
    """
    _check_choice(sampling, alpha1=alpha1, alpha2=alpha2)
    dist = sentiment_distances(embeddings, labels, label_set)
    t = _sample_sentiment(dist.detach(), labels, label_set, alpha1, alpha2, sampling, generator)
    if len(t.anchor) == 0:
        return _zero(embeddings)
    first = F.relu(dist[t.anchor, t.positive] - dist[t.anchor, t.related] + alpha1)
    second = F.relu(dist[t.anchor, t.second_related] - dist[t.anchor, t.negative] + alpha2)
    return (first + second).mean()


def _sample_plain(
    dist: Tensor, labels: Tensor, alpha: float, sampling: str, generator: torch.Generator | None
) -> Triplets:
    """Triplets from the detached distance matrix ``dist (B, B)``: positives share the label, negatives do not."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    usable = negative.any(dim=1)
    if sampling == "hard":
        a = (usable & positive.any(dim=1)).nonzero().squeeze(1)
        p = _hardest(dist[a], positive[a], farthest=True)
        return Triplets(a, p, _hardest(dist[a], negative[a], farthest=False))
    a, p = (positive & usable.unsqueeze(1)).nonzero(as_tuple=True)
    return Triplets(a, p, _pick_farther(dist[a, p], dist[a], negative[a], alpha, sampling, generator))


def sample_triplets(
    embeddings: Tensor,
    labels: Tensor,
    alpha: float = 0.2,
    sampling: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> Triplets:
    """Triplets ``(a, p, n)`` of ``embeddings (B, D)``, ``labels (B,)`` for eq. 2, chosen on ``D``.

    ``random`` / ``semi-hard``: every (anchor, positive) pair with ``n`` picked by ``_pick_farther``; ``hard``:
    one row per anchor, its farthest positive and nearest negative.
    """
    _check_choice(sampling, alpha=alpha)
    _check_batch(embeddings, labels)
    with torch.no_grad():
        dist = _squared_distances(embeddings.detach())
    return _sample_plain(dist, labels, alpha, sampling, generator)


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    alpha: float = 0.2,
    sampling: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Eq. 2 as a loss (FaceNet): mean over the sampled triplets of ``[D(a,p) - D(a,n) + α]_+``.

    ``D`` is eq. 1 on the L2-normalised ``embeddings (B, D)``; ``labels (B,)`` any integer ids. α 0.2 (the
    paper's). A batch without a triplet gives a zero that still backpropagates.
    """
    _check_choice(sampling, alpha=alpha)
    _check_batch(embeddings, labels)
    dist = _squared_distances(embeddings)
    t = _sample_plain(dist.detach(), labels, alpha, sampling, generator)
    if len(t.anchor) == 0:
        return _zero(embeddings)
    return F.relu(dist[t.anchor, t.positive] - dist[t.anchor, t.negative] + alpha).mean()


def centre_loss(embeddings: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
    """Centre loss (Wen et al. 2016), ``mean_i ½ ||x_i - c_{y_i}||²`` of ``embeddings (B, D)``, not normalised.

    ``centres (C, D)``: one per class. Gradients reach ``centres`` too; Wen et al. update them with their own
    rate, which a caller gets by giving the centres their own optimiser parameter group.
    """
    _check_batch(embeddings, labels)
    if centres.ndim != 2 or centres.shape[1] != embeddings.shape[1]:
        raise ConfigError(f"centres must have shape (C, {embeddings.shape[1]}), got {tuple(centres.shape)}")
    if len(labels) == 0:
        return _zero(embeddings)
    if int(labels.min()) < 0 or int(labels.max()) >= len(centres):
        raise ConfigError(f"labels must be class ids in 0..{len(centres) - 1}, got {labels.tolist()}")
    return 0.5 * (embeddings - centres[labels]).pow(2).sum(dim=1).mean()
