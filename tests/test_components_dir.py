"""The checked-in components/ directory: a fresh generation, its metadata and READMEs agree with the compiled
components, stale folders go, and two components loaded only from their YAML files run as a kfp pipeline."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from kfp import compiler, components, dsl
from tiny import tiny_config

from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.catalog import write_components
from image_emotion.kubeflow.components import COMPONENT_FUNCTIONS, GPU_COMPONENTS
from image_emotion.kubeflow.images import DEFAULT_REGISTRY, Images, images


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_checked_in_components_equal_a_fresh_generation(tmp_path, repo_root):
    written = write_components(tmp_path, images())
    fresh, checked_in = tree(tmp_path), tree(repo_root / "components")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(fresh)
    stale = sorted(name for name in fresh.keys() | checked_in.keys() if fresh.get(name) != checked_in.get(name))
    shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    assert not stale, f"components/ is stale ({shown}): run `image-emotion compile-pipeline` and commit it"


def spec_ports(definitions: dict) -> dict[str, tuple[str, str, bool]]:
    """name -> (kind, type, is_artifact_list) as a compiled spec's input or output definitions give them."""
    ports = {n: ("parameter", p["parameterType"], False) for n, p in definitions.get("parameters", {}).items()}
    for name, a in definitions.get("artifacts", {}).items():
        ports[name] = ("artifact", a["artifactType"]["schemaTitle"], a.get("isArtifactList", False))
    return ports


def meta_ports(entries: list[dict]) -> dict[str, tuple[str, str, bool]]:
    return {e["name"]: (e["kind"], e["type"], e["is_artifact_list"]) for e in entries}


def test_metadata_and_readme_agree_with_the_compiled_component(repo_root):
    root = repo_root / "components"
    folders = {f.__name__.removesuffix("_op"): f.__name__ for f in COMPONENT_FUNCTIONS}
    assert {p.parent.name for p in root.glob("*/component.yaml")} == set(folders)
    index = (root / "README.md").read_text()
    for name, function in folders.items():
        spec = yaml.safe_load((root / name / "component.yaml").read_text())
        meta = yaml.safe_load((root / name / "metadata.yaml").read_text())
        (component,) = spec["components"].values()
        assert meta_ports(meta["inputs"]) == spec_ports(component["inputDefinitions"]), name
        assert meta_ports(meta["outputs"]) == spec_ports(component.get("outputDefinitions", {})), name
        loaded = components.load_component_from_file(str(root / name / "component.yaml"))
        assert {i["name"] for i in meta["inputs"]} == set(loaded.component_spec.inputs), name
        (executor,) = spec["deploymentSpec"]["executors"].values()
        gpu = function in GPU_COMPONENTS
        built = Images(DEFAULT_REGISTRY, meta["image_tag"])  # whether that tag is this tree's: the test above
        assert meta["image"] == executor["container"]["image"] == (built.cuda if gpu else built.cpu), name
        assert meta["gpu"] is gpu and meta["image_tag"].startswith(f"{meta['version']}-")
        assert meta["resources"] == (cluster.GPU_RESOURCES if gpu else cluster.CPU_RESOURCES)
        assert meta["function"] == f"image_emotion.kubeflow.components.{function}"
        assert meta["description"] and meta["description"] in " ".join(index.split())
        readme = (root / name / "README.md").read_text()
        assert all(f"| `{i['name']}` |" in readme for i in meta["inputs"]), name
        assert f'load_component_from_file("components/{name}/component.yaml")' in readme
        assert "do not edit by hand" in readme and f"[{name}]({name}/README.md)" in index


def test_stale_component_folders_are_removed_and_other_files_kept(tmp_path):
    (tmp_path / "old_thing").mkdir()
    (tmp_path / "old_thing/component.yaml").write_text("# a component that no longer exists\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.md").write_text("kept\n")
    (tmp_path / "prepare").mkdir()
    (tmp_path / "prepare/component.yaml").write_text("stale\n")
    write_components(tmp_path, images())
    assert not (tmp_path / "old_thing").exists()
    assert (tmp_path / "notes/todo.md").read_text() == "kept\n"
    assert (tmp_path / "prepare/component.yaml").read_text().startswith("# PIPELINE DEFINITION")


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # the images: here, the venv
def test_components_loaded_from_yaml_run_as_a_local_pipeline(tmp_path, repo_root, monkeypatch):
    from kfp import local

    root = repo_root / "components"
    prepare = components.load_component_from_file(str(root / "prepare/component.yaml"))
    train_metric = components.load_component_from_file(str(root / "train_metric/component.yaml"))

    @dsl.pipeline(name="from-yaml")
    def from_yaml(params_yaml: str, mlflow_tracking_uri: str, data_dir: str):
        common = {"params_yaml": params_yaml, "mlflow_tracking_uri": mlflow_tracking_uri, "data_dir": data_dir}
        main = prepare(role="main", **common)
        train_metric(main=main.outputs["dataset"], **common)

    compiler.Compiler().compile(from_yaml, str(tmp_path / "from_yaml.yaml"))
    compiled = yaml.safe_load((tmp_path / "from_yaml.yaml").read_text())
    assert set(compiled["root"]["dag"]["tasks"]) == {"prepare-op", "train-metric-op"}

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(cluster.RUN_ID_ENV, "components-dir-test")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    config = tiny_config(**{"mlflow.experiment": "components-dir"})  # the experiment travels in params_yaml
    from_yaml(
        params_yaml=yaml.safe_dump(config.to_dict()),
        mlflow_tracking_uri=uri,
        data_dir=str(tmp_path),
    )
    (run_dir,) = (tmp_path / "root").iterdir()
    prepared = json.loads(next(run_dir.glob("prepare-op/metrics")).read_text())
    trained = json.loads(next(run_dir.glob("train-metric-op/model/metric.json")).read_text())
    assert prepared["role"] == "main" and prepared["num_images"] == 48  # tiny's synthetic main set
    assert trained["train_images"] == prepared["per_split"]["train"]
    assert trained["test_images"] == prepared["per_split"]["test"]
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "components-dir"]
    stages = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage")}
    assert set(stages) == {"train_metric"}
    assert stages["train_metric"].data.tags["pipeline_key"] == "components-dir-test"  # the run id reached it
    assert stages["train_metric"].data.metrics["test_accuracy"] == pytest.approx(trained["test_accuracy"])
