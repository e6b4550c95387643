"""The compiled pipeline and every component parse strictly into KFP's own protos (no unknown field, every type
right): the pipeline spec into ``PipelineSpec``, its platform part into ``PlatformSpec``, and each executor's
Kubernetes settings into kfp-kubernetes' ``KubernetesExecutorConfig``, which is what the KFP backend's driver
reads. A field the backend does not know would otherwise be dropped there without a word."""

import copy
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

PIPELINE = Path("pipelines/image_emotion.yaml")


def parse_strictly(spec: dict, platform: dict | None) -> int:
    """Parse a compiled package's documents into KFP's protos (a ``ParseError`` on anything unknown); returns the
    number of executors whose Kubernetes settings were parsed."""
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    if platform is None:
        return 0
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for settings in executors.values():
        json_format.ParseDict(
            settings, kubernetes_executor_config_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=False
        )
    return len(executors)


def _documents(path: Path) -> tuple[dict, dict | None]:
    documents = list(yaml.safe_load_all(path.read_text()))
    return documents[0], documents[1] if len(documents) > 1 else None


def test_the_pipeline_and_every_component_parse_strictly_into_kfps_protos(repo_root):
    spec, platform = _documents(repo_root / PIPELINE)
    assert parse_strictly(spec, platform) == len(spec["deploymentSpec"]["executors"]) == 30
    components = sorted((repo_root / "components").glob("*/component.yaml"))
    assert len(components) == 21
    for path in components:
        parse_strictly(*_documents(path))


@pytest.mark.parametrize(
    "where, path, right, wrong",
    [
        ("spec", ("root", "dag", "tasks", "train-classifier-op", "retryPolicy"), "maxRetryCount", "maxRetryCont"),
        ("platform", ("securityContext",), "runAsNonRoot", "runAsNonroot"),
        ("platform", ("pvcMount", 0), "mountPath", "mountPth"),
    ],
)
def test_a_misspelled_field_is_refused(repo_root, where, path, right, wrong):
    spec, platform = copy.deepcopy(_documents(repo_root / PIPELINE))
    target = spec if where == "spec" else platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    if where == "platform":
        target = target["exec-train-classifier-op"]
    for key in path:
        target = target[key]
    target[wrong] = target.pop(right)
    with pytest.raises(json_format.ParseError, match=wrong):
        parse_strictly(spec, platform)
