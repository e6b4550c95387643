"""Emotion label sets, Mikels' wheel and emotion distributions (seed 000 §4.2, seed 002 eq. 3).

Label sets
----------
- ``mikels8``: amusement, awe, contentment, excitement (positive) | anger, disgust, fear, sadness (negative).
- ``binary``: negative, positive.
- ``ekman6``: anger, disgust, fear, joy, sadness, surprise (EmotionROI).
- ``emotion6``: ekman6 + neutral (the 7 probabilities of Emotion6's ``ground_truth.txt``).

Mikels' wheel
-------------
The wheel places the eight categories of Mikels et al. (2005) on a circle. Neither seed states the order of
its figure, so we use the order of the valence-arousal circumplex that the wheel draws (Russell 1980;
Mikels et al. 2005, Table 2 mean ratings): positive emotions from low to high arousal, then negative
emotions from high to low arousal, closing the circle::

    contentment - awe - amusement - excitement - anger - fear - disgust - sadness - (contentment)

so that same-polarity emotions are neighbours, the two high-arousal ends (excitement, anger) meet, and so
do the two low-arousal ends (sadness, contentment). ``dis(i, j) = 1 + steps(i, j)`` around the wheel (the
definition of seed 002), hence ``dis(i, i) = 1`` and the largest distance is 5.

Other label sets
----------------
Eq. 4 needs a distance between categories. Ekman's six basic emotions are six of the eight primaries on
Plutchik's wheel (Plutchik 1980)::

    joy - (trust) - fear - surprise - sadness - disgust - anger - (anticipation) - (joy)

so ``ekman6`` uses ``dis = 1 + steps`` on that wheel (the opposites joy/sadness and fear/anger are 5 apart,
neighbours 2). ``emotion6``'s neutral sits at the wheel's centre, half-way to everything (``dis = 3``).
``binary``: the other polarity is at ``dis = 2``. Without a distance, eq. 4 would put the same share on
every other class and L_ed would only smooth the labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from image_emotion.errors import ConfigError


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of emotion labels; the index of a label is its class id."""

    name: str
    labels: tuple[str, ...]
    positive: frozenset[str] = field(default_factory=frozenset)

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Class id of ``label``; raises ``ConfigError`` naming the valid labels."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ConfigError(
                f"unknown {self.name} label {label!r}; expected one of {', '.join(self.labels)}"
            ) from None

    def polarity(self, label: str) -> str:
        """``'positive'`` or ``'negative'`` (the binary label of ``label``)."""
        self.index(label)
        if self.name == "binary":
            return label
        if label not in self.positive and label not in NEGATIVE_OF.get(self.name, ()):
            raise ConfigError(f"{self.name} label {label!r} has no polarity")
        return "positive" if label in self.positive else "negative"

    def polarity_ids(self) -> np.ndarray:
        """Per class id ``(C,)``: its polarity's index in ``BINARY`` (0 negative, 1 positive), -1 for a label
        without one (Emotion6's neutral). The one polarity mapping every 8 -> 2 figure uses."""
        ids = {"negative": 0, "positive": 1, None: -1}
        return np.array([ids[self.polarity_or_none(x)] for x in self.labels], dtype=np.int64)

    def polarity_or_none(self, label: str) -> str | None:
        """``polarity(label)``, or None for a label of this set without one (Emotion6's neutral)."""
        try:
            return self.polarity(label)
        except ConfigError:
            self.index(label)  # an unknown label is still an error
            return None


MIKELS8 = LabelSet(
    "mikels8",
    ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"),
    positive=frozenset({"amusement", "awe", "contentment", "excitement"}),
)
BINARY = LabelSet("binary", ("negative", "positive"), positive=frozenset({"positive"}))
EKMAN6 = LabelSet(
    "ekman6",
    ("anger", "disgust", "fear", "joy", "sadness", "surprise"),
    positive=frozenset({"joy", "surprise"}),
)
EMOTION6 = LabelSet(
    "emotion6",
    ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"),
    positive=frozenset({"joy", "surprise"}),
)
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (MIKELS8, BINARY, EKMAN6, EMOTION6)}
NEGATIVE_OF: dict[str, frozenset[str]] = {
    "mikels8": frozenset({"anger", "disgust", "fear", "sadness"}),
    "binary": frozenset({"negative"}),
    "ekman6": frozenset({"anger", "disgust", "fear", "sadness"}),
    "emotion6": frozenset({"anger", "disgust", "fear", "sadness"}),  # neutral has no polarity
}

# Coarse mapping used when a Mikels-8 model is read as Ekman-6: the four negative categories are shared;
# the positive ones collapse onto joy, except awe, which is closest to surprise.
MIKELS_TO_EKMAN: dict[str, str] = {
    "amusement": "joy",
    "awe": "surprise",
    "contentment": "joy",
    "excitement": "joy",
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sadness",
}

WHEEL_ORDER: tuple[str, ...] = (
    "contentment",
    "awe",
    "amusement",
    "excitement",
    "anger",
    "fear",
    "disgust",
    "sadness",
)


def get_label_set(name: str) -> LabelSet:
    """The label set called ``name`` (one of ``LABEL_SETS``)."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ConfigError(f"unknown label set {name!r}; expected one of {', '.join(LABEL_SETS)}") from None


def map_label(label: str, source: str, target: str) -> str:
    """Map ``label`` of label set ``source`` to label set ``target`` where the mapping is defined."""
    if source == target:
        get_label_set(source).index(label)
        return label
    if target == "binary":
        return get_label_set(source).polarity(label)
    if (source, target) == ("mikels8", "ekman6"):
        MIKELS8.index(label)
        return MIKELS_TO_EKMAN[label]
    raise ConfigError(f"no mapping from {source} to {target}; defined: any set -> binary, mikels8 -> ekman6")


def wheel_steps(a: str, b: str) -> int:
    """Fewest steps from ``a`` to ``b`` around Mikels' wheel (0..4)."""
    MIKELS8.index(a), MIKELS8.index(b)  # validate both
    d = abs(WHEEL_ORDER.index(a) - WHEEL_ORDER.index(b))
    return min(d, len(WHEEL_ORDER) - d)


def mikels_distance(a: str, b: str) -> int:
    """``dis(a, b) = 1 + steps`` around Mikels' wheel (seed 002); 1 for ``a == b``, at most 5."""
    return 1 + wheel_steps(a, b)


def mikels_distance_matrix() -> np.ndarray:
    """``dis`` for every pair of Mikels-8 classes, indexed by ``MIKELS8`` class id. Shape ``(8, 8)``."""
    labels = MIKELS8.labels
    return np.array([[mikels_distance(a, b) for b in labels] for a in labels], dtype=np.float64)


PLUTCHIK_WHEEL: tuple[str, ...] = ("joy", "trust", "fear", "surprise", "sadness", "disgust", "anger", "anticipation")


def _plutchik_distance(a: str, b: str) -> int:
    d = abs(PLUTCHIK_WHEEL.index(a) - PLUTCHIK_WHEEL.index(b))
    return 1 + min(d, len(PLUTCHIK_WHEEL) - d)


def distance_matrix(label_set: str) -> np.ndarray:
    """``dis`` between the classes of ``label_set`` (see the module docstring). Shape ``(C, C)``."""
    if label_set == "mikels8":
        return mikels_distance_matrix()
    labels = get_label_set(label_set).labels
    if label_set == "binary":
        return np.array([[1.0, 2.0], [2.0, 1.0]])

    def dis(a: str, b: str) -> float:
        if a == b:
            return 1.0
        if "neutral" in (a, b):
            return 3.0
        return float(_plutchik_distance(a, b))

    return np.array([[dis(a, b) for b in labels] for a in labels], dtype=np.float64)


def emotion_distribution(dominant: int | str, p_star: float, label_set: str = "mikels8") -> np.ndarray:
    """Seed 000 eq. 4: ``p_star`` on the dominant class, the rest shared in proportion to ``1 / dis``.

    Returns a distribution over ``label_set`` (Mikels-8 by default) of shape ``(C,)`` that sums to 1.
    """
    if not 0.0 < p_star <= 1.0:
        raise ConfigError(f"dominant probability p* must be in (0, 1], got {p_star}")
    labels = get_label_set(label_set)
    j = labels.index(dominant) if isinstance(dominant, str) else int(dominant)
    inv = 1.0 / distance_matrix(label_set)[j]
    inv[j] = 0.0
    f = inv / inv.sum() * (1.0 - p_star)
    f[j] = p_star
    return f


def emotion_distribution_matrix(p_star: float) -> np.ndarray:
    """Row ``j`` is ``emotion_distribution(j, p_star)``. Shape ``(8, 8)``."""
    return np.stack([emotion_distribution(j, p_star) for j in range(len(MIKELS8))])


def distribution_from_votes(votes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalise vote counts (or probabilities) to a distribution. Shape ``(C,)`` -> ``(C,)``."""
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 1 or (v < 0).any() or not np.isfinite(v).all():
        raise ConfigError(f"votes must be a 1-D list of non-negative numbers, got {list(v)}")
    total = v.sum()
    if total <= 0:
        raise ConfigError("votes sum to zero; an image needs at least one vote")
    return v / total


def dominant_label(votes: Mapping[str, float]) -> str | None:
    """The label with the most votes, or ``None`` when the top vote is tied (such images are dropped)."""
    if not votes:
        return None
    top = max(votes.values())
    winners = [k for k, v in votes.items() if v == top]
    return winners[0] if len(winners) == 1 and top > 0 else None
