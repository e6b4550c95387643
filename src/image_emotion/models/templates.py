"""Seed 001's label templates: every emotion model (label set) as a sentence the generator fills in.

UGRIE turns classification into filling a natural-language template. Each emotion model has a *prompt* (the
text after the image prefix on the encoder side, so the decoder knows which emotion model is asked) and a
*pattern* the decoder writes, with the label and, where the label set has one, its polarity::

    mikels8 / ekman6 / emotion6:  "this image evokes {label} , a {polarity} feeling"
    binary:                       "this image evokes a {label} feeling"

so the polarity words are shared by every emotion model and the emotion words by the models that have them
(anger, disgust, fear, sadness are in Mikels-8 and Ekman-6): one decoder learns how the labels relate.
Emotion6's neutral has no polarity and reads "a neutral feeling".

Without a pretrained BART the decoder needs a vocabulary: ``word_tokenizer`` builds a word-level one over
every word of every prompt and pattern (BART's special tokens at BART's ids), so the small decoder the
embedded default trains from scratch predicts whole words.
"""

from __future__ import annotations

from dataclasses import dataclass

from image_emotion.data.emotions import LABEL_SETS, get_label_set
from image_emotion.errors import ConfigError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # BART's ids 0, 1, 2, 3
BOS, PAD, EOS = 0, 1, 2

_PATTERN = "this image evokes {label} , a {polarity} feeling"
_BINARY_PATTERN = "this image evokes a {label} feeling"
_PROMPTS = {
    "mikels8": "mikels emotions : amusement awe contentment excitement anger disgust fear sadness",
    "binary": "polarity : positive negative",
    "ekman6": "ekman emotions : anger disgust fear joy sadness surprise",
    "emotion6": "emotion6 emotions : anger disgust fear joy sadness surprise neutral",
}


@dataclass(frozen=True)
class EmotionTemplate:
    """How one emotion model is asked (``prompt``) and answered (``pattern`` filled with a label)."""

    emotion_model: str
    prompt: str
    pattern: str

    @property
    def labels(self) -> tuple[str, ...]:
        return get_label_set(self.emotion_model).labels

    def text(self, label: str) -> str:
        """The filled template of ``label`` (a ``ConfigError`` for a label outside the emotion model)."""
        polarity = get_label_set(self.emotion_model).polarity_or_none(label)
        return self.pattern.format(label=label, polarity=polarity or "neutral")

    def texts(self) -> list[str]:
        """The filled template of every label, in class-id order."""
        return [self.text(label) for label in self.labels]


TEMPLATES: dict[str, EmotionTemplate] = {
    name: EmotionTemplate(name, _PROMPTS[name], _BINARY_PATTERN if name == "binary" else _PATTERN)
    for name in LABEL_SETS
}


def get_template(emotion_model: str) -> EmotionTemplate:
    """The template of ``emotion_model`` (a label-set name)."""
    try:
        return TEMPLATES[emotion_model]
    except KeyError:
        raise ConfigError(f"no template for emotion model {emotion_model!r}; defined: {', '.join(TEMPLATES)}") from None


def template_words() -> list[str]:
    """Every word of every prompt and filled template, in a fixed order (the word-level vocabulary)."""
    words: list[str] = []
    for template in TEMPLATES.values():
        for sentence in (template.prompt, *template.texts()):
            words.extend(w for w in sentence.split() if w not in words)
    return words


def word_tokenizer():
    """A ``PreTrainedTokenizerFast`` over ``template_words`` with BART's special tokens and ids: ``text`` ->
    ``<s> words </s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in template_words():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
