"""Seed 001 (UGRIE): label templates, the generative model's template scores and constrained generation, its
training objective and loop (toy sets, resume), the examples it trains on, persistence and the probe baseline.

Every model here is tiny and random (a small random CLIP, a 1-layer BART of width 32 over the template words)
and runs on encoder features drawn at random, so the file takes seconds on a CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from image_emotion.config import EmotionsConfig, GenerativeConfig
from image_emotion.data.emotions import BINARY, emotion_distribution, get_label_set
from image_emotion.data.manifest import make_manifest
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.models.generative import load_generative_model, save_generative_model
from image_emotion.models.templates import get_template, template_words, word_tokenizer
from image_emotion.training.generative import (
    Examples,
    batch_loss,
    binary_distribution,
    build_examples,
    few_shot_rows,
    fit_probe,
    generated_labels,
    label_probabilities,
    new_model,
    train_generative_model,
)

EMOTION_MODELS = ("mikels8", "binary", "ekman6", "emotion6")
MIKELS_ONLY = {"amusement", "awe", "contentment", "excitement"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is fastest, and intra-op threads spin for minutes on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides) -> GenerativeConfig:
    params = dict(
        encoder="clip", encoder_weights=None, image_size=32, d_model=32, layers=1, heads=2, mapping_hidden=32,
        prefix_length=2, epochs=40, batch_size=4, lr=3e-3,
    )  # fmt: skip
    return GenerativeConfig(**{**params, **overrides})


def random_features(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def examples(features: torch.Tensor, emotion_models: list[str], labels: list[str], onehot: bool = False) -> Examples:
    """One example a row: ``labels`` are label names in each row's emotion model; eq. 4 targets (or one-hot)."""
    ids, dists = [], []
    for model_name, label in zip(emotion_models, labels, strict=True):
        label_set = get_label_set(model_name)
        ids.append(label_set.index(label))
        dist = np.eye(len(label_set))[ids[-1]] if onehot else emotion_distribution(label, 0.7, model_name)
        dists.append(torch.tensor(dist, dtype=torch.float32))
    n = len(labels)
    return Examples(
        features,
        list(emotion_models),
        torch.tensor(ids),
        dists,
        np.array(["train"] * n),
        [("main", i) for i in range(n)],
    )


def normalised(text: str) -> str:
    return " ".join(text.split())


def teacher_forced_log_likelihood(model, states: torch.Tensor, mask: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Sum of log p(token) of ``ids`` for one row of encoder states, decoding by hand: the decoder reads the start
    token then the template shifted right, and each position's log-softmax is read at the next token."""
    start = model.bart.config.decoder_start_token_id
    decoder_input = torch.tensor([[start, *ids[:-1]]])
    logits = model.bart(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=decoder_input).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(logp[t, token] for t, token in enumerate(ids))


# --- templates --------------------------------------------------------------------------------------------------


def test_templates_spell_each_label_and_its_polarity():
    assert get_template("mikels8").text("awe") == "this image evokes awe , a positive feeling"
    assert get_template("mikels8").text("sadness") == "this image evokes sadness , a negative feeling"
    assert get_template("binary").text("negative") == "this image evokes a negative feeling"
    assert get_template("ekman6").text("surprise") == "this image evokes surprise , a positive feeling"
    assert get_template("emotion6").text("neutral") == "this image evokes neutral , a neutral feeling"
    assert get_template("binary").texts() == [
        "this image evokes a negative feeling",
        "this image evokes a positive feeling",
    ]
    assert [t.split()[3] for t in get_template("ekman6").texts()] == list(get_label_set("ekman6").labels)
    with pytest.raises(ConfigError, match="joy"):
        get_template("mikels8").text("joy")  # an Ekman label, not a Mikels one
    with pytest.raises(ConfigError, match="plutchik8"):
        get_template("plutchik8")


def test_word_tokenizer_covers_every_template_word_at_barts_special_ids():
    tok = word_tokenizer()
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<s>", "<pad>", "</s>"]
    words = template_words()
    ids = tok.convert_tokens_to_ids(words)
    assert tok.unk_token_id not in ids
    assert len(set(ids)) == len(words)  # one id a word
    assert {"amusement", "neutral", "polarity", ",", "feeling"} <= set(words)
    for name in EMOTION_MODELS:
        template = get_template(name)
        for text in (template.prompt, *template.texts()):
            encoded = tok(text)["input_ids"]
            assert encoded[0] == 0 and encoded[-1] == 2
            assert len(encoded) == len(text.split()) + 2
            assert tok.unk_token_id not in encoded
            assert tok.decode(encoded, skip_special_tokens=True) == text
    assert tok("this image evokes happiness")["input_ids"][4] == tok.unk_token_id


# --- constrained generation ---------------------------------------------------------------------------------------


def test_constrained_generation_writes_only_templates_of_the_requested_emotion_model():
    model = new_model(tiny_cfg(), seed=0).eval()
    feats = random_features(5, model.encoder.output_dim, seed=1)
    for name in EMOTION_MODELS:
        texts_of = get_template(name).texts()
        ids, texts = model.generate(feats, name, constrained=True)
        assert len(ids) == len(texts) == 5
        assert all(c is not None for c in ids), name
        assert [normalised(t) for t in texts] == [texts_of[c] for c in ids], name
        # unconstrained, the untrained decoder (seed 0) babbles: the constraint is what keeps it to the templates
        free_ids, free_texts = model.generate(feats, name, constrained=False)
        assert None in free_ids, (name, free_texts)
        assert not set(map(normalised, free_texts)) <= set(texts_of)


def test_constrained_beam_search_finds_the_best_scoring_template():
    # one branching point (the label word; the polarity follows from it) and templates of equal length: a beam
    # as wide as the label set is exact, so generation must agree with the template log-likelihoods
    model = new_model(tiny_cfg(epochs=6), seed=0)
    feats = random_features(6, model.encoder.output_dim, seed=2)
    labels = ["awe", "fear", "amusement", "sadness", "anger", "contentment"]
    train_generative_model(model, examples(feats, ["mikels8"] * 6, labels), tiny_cfg(epochs=6), seed=0)
    for name in EMOTION_MODELS:
        scores = model.label_log_likelihoods(feats, name).detach()
        ids, _ = model.generate(feats, name, constrained=True, num_beams=len(get_label_set(name)))
        assert ids == scores.argmax(1).tolist(), name


def test_constrained_ekman_generation_never_writes_a_mikels_only_word():
    # a model trained on Mikels-8's positive labels alone leans towards writing them whatever the prompt
    model = new_model(tiny_cfg(), seed=0)
    feats = random_features(4, model.encoder.output_dim, seed=3)
    labels = ["amusement", "awe", "contentment", "excitement"]
    train_generative_model(model, examples(feats, ["mikels8"] * 4, labels), tiny_cfg(), seed=0)
    ids, texts = model.generate(feats, "ekman6", constrained=True, num_beams=2)
    assert all(c is not None for c in ids)
    for text in texts:
        assert not MIKELS_ONLY & set(text.split()), text
        assert normalised(text) in get_template("ekman6").texts()
    free_ids, free_texts = model.generate(feats, "ekman6", constrained=False, num_beams=2)
    assert any(MIKELS_ONLY & set(t.split()) for t in free_texts), free_texts  # what the constraint prevented
    assert None in free_ids


def test_parse_reads_a_template_up_to_its_end_token():
    model = new_model(tiny_cfg(), seed=0)
    tok = word_tokenizer()
    fear = tok(get_template("ekman6").text("fear"))["input_ids"]
    assert model.parse(fear, "ekman6") == 2
    assert model.parse([*fear, 1, 1], "ekman6") == 2  # beam padding after </s>
    assert model.parse(fear[:-1], "ekman6") is None  # never finished
    assert model.parse(fear, "binary") is None
    amusement = tok(get_template("mikels8").text("amusement"))["input_ids"]
    assert model.parse(amusement, "ekman6") is None
    assert model.parse(amusement, "mikels8") == 0


# --- template scores ----------------------------------------------------------------------------------------------


def test_label_log_likelihoods_equal_hand_decoded_template_log_likelihoods():
    model = new_model(tiny_cfg(), seed=0).eval()
    feats = random_features(3, model.encoder.output_dim, seed=4)
    tok = word_tokenizer()
    with torch.no_grad():
        for name in ("mikels8", "binary", "emotion6"):
            scores = model.label_log_likelihoods(feats, name)
            assert scores.shape == (3, len(get_label_set(name)))
            for row in (0, 2):
                states, mask = model.encoder_states(feats[row : row + 1], [name])
                for c, text in enumerate(get_template(name).texts()):
                    ids = tok(text)["input_ids"]
                    expected = teacher_forced_log_likelihood(model, states, mask, ids)
                    assert scores[row, c].item() == pytest.approx(expected.item(), abs=1e-4), (name, row, c)
                    # the same through BART's own token-mean cross-entropy (labels=), times the token count
                    out = model.bart(encoder_outputs=(states,), attention_mask=mask, labels=torch.tensor([ids]))
                    assert scores[row, c].item() == pytest.approx(-out.loss.item() * len(ids), abs=1e-4)


def test_scoring_a_batch_equals_scoring_each_row_alone():
    model = new_model(tiny_cfg(epochs=5), seed=0)
    feats = random_features(4, model.encoder.output_dim, seed=5)
    labels = ["awe", "fear", "anger", "contentment"]
    train_generative_model(model, examples(feats, ["mikels8"] * 4, labels), tiny_cfg(epochs=5), seed=0)
    with torch.no_grad():
        batch = model.label_log_likelihoods(feats, "mikels8")
        rows = torch.cat([model.label_log_likelihoods(feats[i : i + 1], "mikels8") for i in range(4)])
        torch.testing.assert_close(batch, rows, atol=1e-5, rtol=0)
        assert not torch.allclose(batch[0], batch[1], atol=1e-4)  # the rows do differ
        # a batch mixing emotion models pads the shorter prompts: the padding must not change any row's scores
        names = ["mikels8", "binary", "ekman6", "emotion6"]
        states, mask = model.encoder_states(feats, names)
        assert mask.shape[1] == model.mapping.prefix_length + max(
            len(get_template(m).prompt.split()) + 2 for m in names
        )
        for i, name in enumerate(names):
            mixed = model.score_labels(states[i : i + 1], mask[i : i + 1], name)
            torch.testing.assert_close(mixed, model.label_log_likelihoods(feats[i : i + 1], name), atol=1e-5, rtol=0)


# --- the objective ------------------------------------------------------------------------------------------------


def test_batch_loss_is_token_mean_nll_and_distribution_cross_entropy():
    model = new_model(tiny_cfg(), seed=0).eval()
    feats = random_features(4, model.encoder.output_dim, seed=6)
    names = ["mikels8", "binary", "ekman6", "mikels8"]
    batch = examples(feats, names, ["awe", "negative", "joy", "fear"])
    tok = word_tokenizer()
    texts = [get_template(m).text(get_template(m).labels[c]) for m, c in zip(names, batch.labels.tolist(), strict=True)]
    ids = [tok(t)["input_ids"] for t in texts]
    assert len(ids[1]) < len(ids[0])  # the binary template is shorter: padding is exercised
    labels = torch.full((4, max(map(len, ids))), -100)
    for i, x in enumerate(ids):
        labels[i, : len(x)] = torch.tensor(x)
    with torch.no_grad():
        states, mask = model.encoder_states(feats, names)
        hf_nll = model.bart(encoder_outputs=(states,), attention_mask=mask, labels=labels).loss.item()
        assert batch_loss(model, batch, 0.0).item() == pytest.approx(hf_nll, abs=1e-5)

        scores = [model.label_log_likelihoods(feats[i : i + 1], m)[0].double() for i, m in enumerate(names)]
        gold = [scores[i][c] for i, c in enumerate(batch.labels.tolist())]
        nll = -sum(gold).item() / sum(map(len, ids))
        assert nll == pytest.approx(hf_nll, abs=1e-5)
        ce = np.mean(
            [-(batch.distributions[i].double() * torch.log_softmax(scores[i], 0)).sum().item() for i in range(4)]
        )
        assert batch_loss(model, batch, 1.0).item() == pytest.approx(ce, abs=1e-4)
        assert batch_loss(model, batch, 0.25).item() == pytest.approx(0.75 * nll + 0.25 * ce, abs=1e-4)
    assert abs(ce - nll) > 0.1  # the two terms differ, so the weights are told apart


def test_binary_distribution_folds_mass_onto_negative_and_positive():
    mikels = torch.tensor([0.05, 0.10, 0.15, 0.30, 0.10, 0.05, 0.20, 0.05])  # 4 positive, then 4 negative
    torch.testing.assert_close(binary_distribution(mikels, "mikels8"), torch.tensor([0.40, 0.60]))
    emotion6 = torch.tensor(
        [0.10, 0.10, 0.10, 0.20, 0.10, 0.10, 0.30]
    )  # anger disgust fear joy sadness surprise neutral
    torch.testing.assert_close(binary_distribution(emotion6, "emotion6"), torch.tensor([4 / 7, 3 / 7]))
    ekman = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # all surprise
    torch.testing.assert_close(binary_distribution(ekman, "ekman6"), torch.tensor([0.0, 1.0]))
    assert binary_distribution(torch.tensor([0.0] * 6 + [1.0]), "emotion6") is None  # only neutral
    with pytest.raises(ValueError):
        binary_distribution(torch.tensor([0.5, 0.5]), "mikels8")  # the wrong length


# --- training -----------------------------------------------------------------------------------------------------


def test_training_on_a_toy_set_ranks_each_images_label_first():
    cfg = tiny_cfg(epochs=40)
    model = new_model(cfg, seed=0)
    feats = random_features(4, model.encoder.output_dim, seed=7)
    labels = ["awe", "fear", "amusement", "sadness"]
    target = [get_label_set("mikels8").index(x) for x in labels]
    before = label_probabilities(model, feats, "mikels8").argmax(1).tolist()
    assert before != target  # untrained, it does not know them
    losses = train_generative_model(model, examples(feats, ["mikels8"] * 4, labels), cfg, seed=0)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert losses[0] > 2 * losses[-1], losses
    probs = label_probabilities(model, feats, "mikels8")
    assert probs.argmax(1).tolist() == target
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    assert generated_labels(model, feats, "mikels8", constrained=True, num_beams=2) == target


def test_a_batch_mixing_emotion_models_trains_one_model_for_all_of_them():
    cfg = tiny_cfg(epochs=60, batch_size=6)
    model = new_model(cfg, seed=0)
    feats = random_features(6, model.encoder.output_dim, seed=8)
    names = ["mikels8", "mikels8", "binary", "binary", "ekman6", "ekman6"]
    labels = ["awe", "sadness", "negative", "positive", "joy", "fear"]
    train = examples(feats, names, labels)

    loss = batch_loss(model, train, 0.5)
    assert torch.isfinite(loss)
    loss.backward()
    for part in (model.mapping, model.bart.get_encoder(), model.bart.get_decoder()):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()

    train_generative_model(model, train, cfg, seed=0)
    for name in ("mikels8", "binary", "ekman6"):
        rows = [i for i, m in enumerate(names) if m == name]
        expected = [get_label_set(name).index(labels[i]) for i in rows]
        assert label_probabilities(model, feats[rows], name).argmax(1).tolist() == expected, name
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())  # encoder frozen


def test_resume_with_dropout_draws_the_same_masks_as_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(epochs=2, dropout=0.3)
    dim = new_model(cfg, seed=0).encoder.output_dim
    feats = random_features(6, dim, seed=9)
    train = examples(feats, ["mikels8"] * 6, ["awe", "fear", "anger"] * 2)
    train_generative_model(new_model(cfg, seed=0), train, cfg, seed=0, checkpoint=tmp_path / "c.pt", fingerprint="d")
    longer = tiny_cfg(epochs=4, dropout=0.3)
    torch.manual_seed(123)  # whatever the global generator holds, the checkpoint's state is restored
    resumed = train_generative_model(new_model(longer, seed=0), train, longer, seed=0, checkpoint=tmp_path / "c.pt",
                                     fingerprint="d")  # fmt: skip
    straight = train_generative_model(new_model(longer, seed=0), train, longer, seed=0)
    assert resumed == straight  # bit for bit on the CPU


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "last.pt"
    dim = new_model(tiny_cfg(), seed=0).encoder.output_dim
    feats = random_features(6, dim, seed=9)
    train = examples(feats, ["mikels8"] * 6, ["awe", "fear", "anger", "joy", "surprise", "sadness"][:3] * 2)

    first = train_generative_model(new_model(tiny_cfg(epochs=2), seed=0), train, tiny_cfg(epochs=2), seed=0,
                                   checkpoint=ckpt, fingerprint="a")  # fmt: skip
    assert len(first) == 2 and ckpt.is_file()
    shutil.copy(ckpt, tmp_path / "two_epochs.pt")

    resumed_model = new_model(tiny_cfg(epochs=4), seed=0)
    seen = []
    resumed = train_generative_model(resumed_model, train, tiny_cfg(epochs=4), seed=0, checkpoint=ckpt,
                                     fingerprint="a", on_epoch=lambda e, _: seen.append(e))  # fmt: skip
    assert len(resumed) == 4 and resumed[:2] == first
    assert seen == [2, 3]  # only the missing epochs ran

    straight_model = new_model(tiny_cfg(epochs=4), seed=0)
    straight = train_generative_model(straight_model, train, tiny_cfg(epochs=4), seed=0)
    assert resumed == pytest.approx(straight, abs=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            resumed_model.label_log_likelihoods(feats, "mikels8"),
            straight_model.label_log_likelihoods(feats, "mikels8"),
            atol=1e-5, rtol=0,
        )  # fmt: skip

    # another fingerprint (other data) starts afresh instead of resuming the two epochs of "a"
    other = examples(feats.flip(0), ["mikels8"] * 6, ["sadness", "anger"] * 3)
    afresh = train_generative_model(new_model(tiny_cfg(epochs=3), seed=0), other, tiny_cfg(epochs=3), seed=0,
                                    checkpoint=tmp_path / "two_epochs.pt", fingerprint="b")  # fmt: skip
    reference = train_generative_model(new_model(tiny_cfg(epochs=3), seed=0), other, tiny_cfg(epochs=3), seed=0)
    assert afresh == pytest.approx(reference, abs=1e-5)
    assert afresh[0] != pytest.approx(first[0], abs=1e-3)


def test_a_linear_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 4.0  # class k: a spike on feature k (LayerNorm keeps it)
    labels = torch.arange(4).repeat_interleave(10)
    feats = centres[labels] + 0.3 * torch.randn(40, 8, generator=gen)
    probe = fit_probe(feats, labels, 4, seed=0)
    with torch.no_grad():
        assert (probe(feats).argmax(1) == labels).all()
        fresh = centres[torch.arange(4)] + 0.3 * torch.randn(4, 8, generator=gen)
        assert probe(fresh).argmax(1).tolist() == [0, 1, 2, 3]


# --- examples -----------------------------------------------------------------------------------------------------


def prepared(tmp_path, name: str, label_set: str, labels: list[str], splits: list[str]) -> PreparedDataset:
    rows = [
        {"path": f"{name}/{i}.jpg", "label": label, "label_set": label_set, "split": split}
        for i, (label, split) in enumerate(zip(labels, splits, strict=True))
    ]
    return PreparedDataset(make_manifest(rows), tmp_path, name, label_set)


def test_build_examples_adds_the_binary_view_of_every_image_with_a_polarity(tmp_path):
    main = prepared(tmp_path, "main", "mikels8", ["awe", "fear", "sadness"], ["train", "train", "val"])
    e6 = prepared(tmp_path, "e6", "emotion6", ["joy", "neutral"], ["train", "test"])
    main_feats, e6_feats = random_features(3, 5, seed=10), random_features(2, 5, seed=11)
    sets = {"main": (main, main_feats), "e6": (e6, e6_feats)}

    ex = build_examples(sets, EmotionsConfig(), binary_view=True)
    assert ex.sources == [("main", 0), ("main", 0), ("main", 1), ("main", 1), ("main", 2), ("main", 2),
                          ("e6", 0), ("e6", 0), ("e6", 1)]  # fmt: skip
    assert ex.emotion_models == ["mikels8", "binary"] * 3 + ["emotion6", "binary", "emotion6"]
    # awe 1, positive 1; fear 6, negative 0; sadness 7, negative 0; joy 3, positive 1; neutral 6 (no binary view)
    assert ex.labels.tolist() == [1, 1, 6, 0, 7, 0, 3, 1, 6]
    assert BINARY.labels[ex.labels[1]] == "positive" and BINARY.labels[ex.labels[3]] == "negative"
    assert list(ex.splits) == ["train", "train", "train", "train", "val", "val", "train", "train", "test"]
    expected_feats = torch.stack([main_feats[0], main_feats[0], main_feats[1], main_feats[1], main_feats[2],
                                  main_feats[2], e6_feats[0], e6_feats[0], e6_feats[1]])  # fmt: skip
    assert torch.equal(ex.features, expected_feats)
    awe = emotion_distribution("awe", 0.7, "mikels8")  # eq. 4 with the default p* = 0.7
    np.testing.assert_allclose(ex.distributions[0].numpy(), awe, atol=1e-6)
    np.testing.assert_allclose(ex.distributions[1].numpy(), [awe[4:].sum(), awe[:4].sum()], atol=1e-6)
    assert ex.distributions[1][1] > 0.7  # awe's mass stays mostly positive
    joy = emotion_distribution("joy", 0.7, "emotion6")
    pos, neg = joy[[3, 5]].sum(), joy[[0, 1, 2, 4]].sum()
    np.testing.assert_allclose(ex.distributions[7].numpy(), [neg / (pos + neg), pos / (pos + neg)], atol=1e-6)
    assert len(ex.distributions[8]) == 7

    own = build_examples(sets, EmotionsConfig(), binary_view=False)
    assert own.sources == [("main", 0), ("main", 1), ("main", 2), ("e6", 0), ("e6", 1)]
    assert own.emotion_models == ["mikels8"] * 3 + ["emotion6"] * 2
    assert own.labels.tolist() == [1, 6, 7, 3, 6]
    assert ex.of_model("binary").sources == [("main", 0), ("main", 1), ("main", 2), ("e6", 0)]

    onehot = build_examples({"main": (main, main_feats)}, EmotionsConfig(target="onehot"), binary_view=True)
    np.testing.assert_allclose(onehot.distributions[2].numpy(), np.eye(8)[6])
    np.testing.assert_allclose(onehot.distributions[3].numpy(), [1.0, 0.0])


def few_shot_pool() -> Examples:
    """main (Mikels-8): images 0-2 awe, 3-5 fear, each with its binary view; e6 (Emotion6): 0-2 joy (with the
    binary view) and 3-4 neutral (without)."""
    models, labels, sources = [], [], []
    for image, label in enumerate(["awe"] * 3 + ["fear"] * 3):
        models += ["mikels8", "binary"]
        labels += [get_label_set("mikels8").index(label), BINARY.index("positive" if label == "awe" else "negative")]
        sources += [("main", image)] * 2
    for image, label in enumerate(["joy"] * 3 + ["neutral"] * 2):
        views = [("emotion6", get_label_set("emotion6").index(label))]
        if label == "joy":
            views.append(("binary", 1))
        for model_name, c in views:
            models.append(model_name)
            labels.append(c)
            sources.append(("e6", image))
    n = len(labels)
    return Examples(
        torch.zeros(n, 3), models, torch.tensor(labels), [torch.ones(2)] * n, np.array(["train"] * n), sources
    )


def test_few_shot_rows_take_k_images_a_class_with_all_their_views():
    pool = few_shot_pool()
    own_label = {}  # (set, image) -> its label in its own label set
    for (source, image), model_name, c in zip(pool.sources, pool.emotion_models, pool.labels.tolist(), strict=True):
        if model_name != "binary":
            own_label[(source, image)] = (source, c)
    draws = []
    for seed in range(8):
        rows = few_shot_rows(pool, shots=1, seed=seed)
        chosen = {pool.sources[i] for i in rows}
        classes = [own_label[src] for src in chosen]
        assert sorted(classes) == sorted(set(own_label.values()))  # one image of every class of every set
        assert len(chosen) == 4  # awe, fear, joy, neutral
        assert sorted(rows.tolist()) == [i for i, src in enumerate(pool.sources) if src in chosen]  # every view
        assert len(rows) == 7  # 3 images with two views, neutral with one
        assert (rows == few_shot_rows(pool, shots=1, seed=seed)).all()  # the seed fixes the draw
        draws.append(frozenset(chosen))
    assert len(set(draws)) > 1  # other seeds draw other images

    two = few_shot_rows(pool, shots=2, seed=0)
    chosen = {pool.sources[i] for i in two}
    assert len(chosen) == 8 and len(two) == 14
    assert {("e6", 3), ("e6", 4)} <= chosen  # neutral has only two images: both
    everything = few_shot_rows(pool, shots=10, seed=0)
    assert everything.tolist() == list(range(len(pool)))


# --- persistence --------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    cfg = tiny_cfg(epochs=5)
    model = new_model(cfg, seed=0)
    feats = random_features(3, model.encoder.output_dim, seed=12)
    train_generative_model(model, examples(feats, ["mikels8"] * 3, ["awe", "fear", "anger"]), cfg, seed=0)
    save_generative_model(tmp_path / "gm", model, {"emotion_models": ["mikels8"]})
    loaded, state = load_generative_model(tmp_path / "gm")
    assert state["emotion_models"] == ["mikels8"]
    assert not loaded.training
    with torch.no_grad():
        for name in ("mikels8", "emotion6"):
            torch.testing.assert_close(
                loaded.label_log_likelihoods(feats, name), model.label_log_likelihoods(feats, name), atol=1e-5, rtol=0
            )
    assert loaded.generate(feats, "mikels8") == model.generate(feats, "mikels8")
    assert loaded.generate(feats, "binary", constrained=False) == model.generate(feats, "binary", constrained=False)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(images), model.eval().encode_images(images))

    with pytest.raises(ValueError, match="reserved"):
        save_generative_model(tmp_path / "bad", model, {"settings": 1})


def test_loading_something_that_is_not_a_generative_model_is_a_config_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=str(empty)):
        load_generative_model(empty)
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"kind": "emotion_classifier", "state_dict": {}}, other / "model.pt")
    with pytest.raises(ConfigError, match="not a generative model"):
        load_generative_model(other)
