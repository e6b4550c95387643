"""The paper profile: one switch that sets the papers' full configuration, checked by the same schema, and the
committed ``params.paper.yaml`` is that profile written out."""

from __future__ import annotations

import pytest

from image_emotion import config as config_module
from image_emotion.cli import main
from image_emotion.config import Config, load_config, profile_config
from image_emotion.errors import ConfigError


def test_the_paper_profile_holds_the_papers_own_values():
    paper = profile_config("paper")
    # seed 000 §5.2 / Table 1 and the FPN paper it follows
    assert (paper.detector.backbone, paper.detector.min_size, paper.detector.max_size) == ("resnet101", 800, 1333)
    assert (paper.classifier.batch_size, paper.classifier.epochs, paper.classifier.lr) == (128, 100, 0.001)
    assert (paper.data.dataset, paper.detector_data.dataset) == ("fi", "emotionroi")
    assert [s.dataset for s in paper.transfer.sets] == ["iaps", "artphoto", "abstract", "emotionroi"]
    # seed 002's Implementation Details
    m = paper.metric
    assert (m.backbone, m.image_size, m.embedding_dim, m.freeze_backbone) == ("googlenet", 224, 512, False)
    assert (m.epochs, m.batch_size, m.min_per_class, m.lr_conv, m.lr_last) == (100, 128, 8, 1e-4, 1e-3)
    assert (m.alpha, m.alpha1, m.alpha2, m.omega) == (0.2, 0.2, 0.1, 0.7)
    # seed 001: CLIP and BART
    assert paper.generative.encoder == "clip" and paper.generative.decoder_weights is not None
    # everything the profile does not name keeps the schema's default
    assert paper.serving == Config().serving and paper.emotions == Config().emotions


def test_the_committed_params_paper_yaml_is_the_profile_written(repo_root, tmp_path, capsys):
    written = tmp_path / "params.paper.yaml"
    assert main(["params", "--profile", "paper", "--write", "--params", str(written)]) == 0
    assert (repo_root / "params.paper.yaml").read_text() == written.read_text(), (
        "params.paper.yaml is stale: run `image-emotion params --profile paper --write --params params.paper.yaml`"
    )
    assert load_config(written) == profile_config("paper")


def test_a_profile_key_the_schema_lacks_is_an_error_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("detector.backbone: resnet101\ndetector.min_sise: 800\n")
    monkeypatch.setattr(config_module, "PROFILES_DIR", tmp_path)
    with pytest.raises(ConfigError) as err:
        profile_config("bad")
    assert "bad.yaml" in str(err.value) and "min_sise" in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'papers'; expected one of paper"):
        profile_config("papers")


def test_profile_without_write_is_refused(capsys):
    assert main(["params", "--profile", "paper"]) == 2
    assert "--profile writes a params file" in capsys.readouterr().err


def test_version_names_the_package_and_its_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"image-emotion {version('image-emotion')}"
