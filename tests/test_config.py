"""The one typed configuration: params.yaml is the schema's defaults written out, unknown keys and bad values are
one-line errors naming the key (and the nearest valid key), overrides re-validate, and every consumer reads the
schema's values (the kfp pipeline's λ list and folds included)."""

from __future__ import annotations

import pytest
import yaml

from image_emotion.config import Config, DetectorConfig, load_config, render_params
from image_emotion.errors import ConfigError
from image_emotion.kubeflow.images import images
from image_emotion.kubeflow.pipeline import build_pipeline


def test_committed_params_yaml_is_the_schema_rendered(repo_root):
    assert (repo_root / "params.yaml").read_text() == render_params(), (
        "params.yaml differs from the schema's defaults: run `image-emotion params --write` and commit it"
    )
    assert load_config(repo_root / "params.yaml") == Config()


def test_rendered_params_round_trip_with_descriptions():
    text = render_params(Config().with_overrides(["classifier.lambdas=[0.0, 0.25]", "detector.top_k=4"]))
    assert "# K emotional regions per image" in text
    assert yaml.safe_load(text)["classifier"]["lambdas"] == [0.0, 0.25]
    assert Config.model_validate(yaml.safe_load(text)).detector.top_k == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("classifer.lr=0.1", "unknown key 'classifer' (did you mean 'classifier'?)"),
        ("classifier.lrr=0.1", "unknown key 'classifier.lrr' (did you mean 'classifier.lr'?)"),
        ("transfer.head.epoch=3", "unknown key 'transfer.head.epoch' (did you mean 'transfer.head.epochs'?)"),
        ("data.emotionroi.treshold=0.4", "did you mean 'data.emotionroi.threshold'?"),
        ("detector.top_k=zero", "detector.top_k: Input should be a valid integer"),
        ("detector.top_k=0", "detector.top_k: Input should be greater than or equal to 1, got 0"),
        ("detector.anchor_sizes=[32, 64]", "detector.anchor_sizes"),
        ("classifier.lambdas=[0.5, 1.5]", "needs distinct values in [0, 1], got [0.5, 1.5]"),
        ("device=tpu", "device: Input should be 'auto', 'cpu' or 'cuda', got 'tpu'"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as err:
        Config().with_overrides([override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("classifier: {lr: x, hiden: 3}\nextract: {batch_size: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.count(str(path)) == 3
    assert "classifier.lr" in text and "'classifier.hiden' (did you mean 'classifier.hidden'?)" in text
    assert "extract.batch_size" in text


def test_overrides_apply_and_keep_the_rest(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("finetune: {epochs: 7}\n")
    config = load_config(path, ["finetune.lr=0.5", "classifier.lambdas=[0.0, 0.4]"])
    assert (config.finetune.epochs, config.finetune.lr, config.classifier.lambdas) == (7, 0.5, (0.0, 0.4))
    assert config.finetune.batch_size == FINETUNE_BATCH_DEFAULT  # unset keys keep the schema's default
    with pytest.raises(ConfigError, match=r"must look like key\.sub=value"):
        load_config(path, ["finetune.lr"])


FINETUNE_BATCH_DEFAULT = 8  # the schema's documented default (params.yaml: finetune.batch_size)


def test_sections_built_directly_are_validated_too():
    assert DetectorConfig(top_k=3).top_k == 3
    with pytest.raises(ConfigError, match="DetectorConfig: unknown key 'topk' \\(did you mean 'top_k'\\?\\)"):
        DetectorConfig(topk=3)
    with pytest.raises(Exception, match="frozen"):
        DetectorConfig().top_k = 4


def test_the_kfp_pipeline_takes_its_settings_once_in_params_yaml():
    """λ, the sets, the threshold and the experiment travel inside params_yaml only (no parameter that could say
    otherwise)."""
    inputs = build_pipeline(images()).component_spec.inputs
    assert "params_yaml" in inputs and inputs["params_yaml"].default is None  # required
    assert not set(inputs) & {"lambdas", "transfer_sets", "generative_sets", "min_accuracy", "mlflow_experiment"}


def test_set_from_copies_a_value_inside_the_params_whatever_it_holds():
    from image_emotion.config import copied_values, value_at

    hostile = "/data/it's; rm -rf ~ #$(x)"
    raw = {"transfer": {"sets": [{"name": "small", "root": hostile}, {"name": "art", "root": "b"}]}, "x": {"y": 1}}
    assert value_at(raw, "transfer.sets.small.root") == hostile and value_at(raw, "x.y") == 1
    assert copied_values(raw, ["data.root=transfer.sets.art.root"]) == {"data.root": "b"}
    with pytest.raises(ConfigError, match=r"no setting 'transfer.sets.nope.root' in the params \(at 'nope'\)"):
        value_at(raw, "transfer.sets.nope.root")
    with pytest.raises(ConfigError, match=r"must look like key\.sub=other\.key"):
        copied_values(raw, ["data.root"])


def test_a_bad_override_is_blamed_on_its_set_option_and_a_bad_file_key_on_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("classifier: {hiden: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["classifier.lr=abc", "detector.topk=2"])
    problems = str(err.value).split("; ")
    assert f"{path}: unknown key 'classifier.hiden' (did you mean 'classifier.hidden'?)" in problems
    assert (
        "--set classifier.lr=abc: classifier.lr: Input should be a valid number, unable to parse string as a "
        "number, got 'abc'" in problems
    )
    assert "--set detector.topk=2: unknown key 'detector.topk' (did you mean 'detector.top_k'?)" in problems
    with pytest.raises(ConfigError, match=r"^--set classifier.lambdas=\[0.5, 1.5\]: classifier"):
        Config().with_overrides(["classifier.lambdas=[0.5, 1.5]"])
