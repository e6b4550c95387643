"""The kfp v2 pipeline of the whole graph, its compilation and its local run (``kfp.local``).

pretrain_objects [GPU] + prepare detector data -> finetune_detector [GPU] (with ``workers`` > 1: a TrainJob of
that many GPU pods, launched and awaited by finetune_detector_job) -> prepare main data ->
shard_indices -> ParallelFor shard: extract_regions [GPU] of shard i of ``extraction_shards`` -> Collected ->
merge_features -> train_classifier [GPU] (the whole λ sweep, λ* and its variants) -> ParallelFor transfer set:
prepare, extract_regions [GPU], transfer_cv -> Collected -> evaluate -> report (HTML + Markdown artifacts) and,
if validation accuracy >= min_accuracy, register. Seed 002: prepare main data -> train_metric [GPU] -> retrieve ->
report, register_metric, and retrieve_transfer for each transfer set (in its loop) -> report. Seed 001: prepare
each generative set (ParallelFor) -> Collected -> train_generative [GPU] -> evaluate_generative -> report,
register_generative. The same graph as dvc.yaml.

On a cluster (``_Platform``): every pod mounts the data volume (``data_pvc``) where relative dataset roots and
weight paths resolve, gets the MLflow and S3 credentials from secrets (``mlflow_secret``, ``s3_secret``) and the
run id from its ``pipeline/runid`` label, and runs as the images' non-root user with ``HOME`` writable under any
uid and the CPU and memory requests and limits, timeout and retries of its size class (``cluster.StepSize``:
GPU, CPU, or small for bookkeeping); the GPU steps request a ``gpu_type`` accelerator (a compile option),
tolerate ``gpu_tolerations``, select ``gpu_node_selector`` nodes, and the training ones keep checkpoints on the
work volume (``work_pvc``) so a retried pod resumes. No input carries the run id, so kfp's cache hits when
params, data artifacts and image are the same; the register steps are never cached. The data on the volume are
in no cache key by themselves: each prepare step also takes its role's data version (the parameter
``data_versions``, filled by ``pipeline_arguments``), so new data miss the cache; a role without a version gets a
new one on every run (``data_version_op``).
"""

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, kubernetes

from image_emotion.config import Config
from image_emotion.kubeflow import cluster, runtime
from image_emotion.kubeflow.components import build_components
from image_emotion.kubeflow.images import Images, images

PIPELINE_NAME = "image-emotion"
DEFAULT_PIPELINE_YAML = Path("pipelines/image_emotion.yaml")
CLUSTER = cluster.DEFAULTS


class _Platform:
    """What every task gets on a cluster: the data volume, the secrets, the run id, the non-root user, a writable
    HOME, requests and limits of its size class (``cluster.StepSize``), a timeout and retries; GPU steps also the
    work volume for checkpoints, an accelerator, tolerations and a node selector."""

    def __init__(
        self, data_pvc, work_pvc, mlflow_secret, s3_secret, gpu_type, gpu_tolerations, gpu_node_selector, home
    ):
        self.data_pvc, self.work_pvc, self.home = data_pvc, work_pvc, home
        self.mlflow_secret, self.s3_secret = mlflow_secret, s3_secret
        self.gpu_type, self.gpu_tolerations, self.gpu_node_selector = gpu_type, gpu_tolerations, gpu_node_selector

    def _common(self, task: dsl.PipelineTask, size: cluster.StepSize) -> dsl.PipelineTask:
        # one attempt's deadline (the pod's activeDeadlineSeconds); the retry policy's max duration is sized from it
        kubernetes.set_timeout(task, size.timeout_s)
        # read-write, though no step writes there: kfp-kubernetes 2.17's PvcMount has no readOnly field (the claim,
        # mount_path and sub_path only); the TrainJob's pods, whose spec is ours, mount it read-only
        kubernetes.mount_pvc(task, pvc_name=self.data_pvc, mount_path=cluster.DATA_MOUNT)
        # every key optional: a secret or a key that is not there leaves its variable unset (AWS_ENDPOINT_URL and
        # MLFLOW_S3_ENDPOINT_URL reach the pod where the s3 secret has them)
        kubernetes.use_secret_as_env(task, self.mlflow_secret, cluster.MLFLOW_SECRET_KEYS, optional=True)
        kubernetes.use_secret_as_env(task, self.s3_secret, cluster.S3_SECRET_KEYS, optional=True)
        kubernetes.use_field_path_as_env(task, cluster.RUN_ID_ENV, cluster.RUN_ID_FIELD)
        # the container's runAsUser/runAsGroup/runAsNonRoot: all kfp-kubernetes 2.17 can set; the KFP backend
        # adds allowPrivilegeEscalation: false, capabilities drop ALL and the RuntimeDefault seccomp profile, and
        # the namespace's Pod Security level (deploy/kubernetes/namespace.yaml) refuses a pod without them
        kubernetes.set_security_context(task, run_as_user=cluster.UID, run_as_group=cluster.UID, run_as_non_root=True)
        if self.home:  # writable under any uid (cluster.HOME)
            task.set_env_variable("HOME", self.home)
        # no ephemeral-storage here: kfp's ResourceSpec has none; the namespace's LimitRange gives a default request
        return (
            task.set_cpu_request(size.resources["cpu"])
            .set_cpu_limit(size.cpu_limit)
            .set_memory_request(size.resources["memory"])
            .set_memory_limit(size.memory_limit)
            .set_retry(**size.retry)
        )

    def _work(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The work volume (checkpoints, and what a step hands a TrainJob) at ``cluster.WORK_MOUNT``."""
        kubernetes.mount_pvc(task, pvc_name=self.work_pvc, mount_path=cluster.WORK_MOUNT)
        return task

    def gpu(self, task: dsl.PipelineTask, checkpoints: bool = False) -> dsl.PipelineTask:
        """One GPU, the GPU size class and retries for a training or extraction step (``checkpoints``: the work
        volume mounted too). With ``gpu_type`` ``cluster.NO_GPU`` (a cluster without GPUs: kind or k3d on a laptop)
        the step runs on CPU, sized and scheduled as a CPU step."""
        on_cpu = self.gpu_type == cluster.NO_GPU
        self._common(task, cluster.CPU_STEP if on_cpu else cluster.GPU_STEP)
        if checkpoints:
            self._work(task)
        if on_cpu:
            return task
        kubernetes.add_toleration_json(task, self.gpu_tolerations)
        kubernetes.add_node_selector_json(task, self.gpu_node_selector)
        return task.set_accelerator_type(self.gpu_type).set_accelerator_limit(
            cluster.GPU_STEP.resources["accelerators"]
        )

    def register(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A register step: never cached (it must see the registry as it is now), retried like any step (it is
        idempotent: a retry of the same run registers nothing new, tracking/registry.py)."""
        return self.cpu(task).set_caching_options(False)

    def job(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that launches a TrainJob and waits: a CPU step with the work volume, where it hands over the
        job's inputs and finds its outputs (each attempt submits a new job, owned by the step's pod)."""
        return self.cpu(self._work(task))

    def cpu(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The CPU size class and retries for a step that runs a stage without a GPU."""
        return self._common(task, cluster.CPU_STEP)

    def small(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The small size class, a short timeout and retries for a bookkeeping step (it returns a value read from
        its parameters)."""
        return self._common(task, cluster.SMALL_STEP)


def data_version_op(data_versions: dict, role: str) -> str:
    """The data version the prepare step of ``role`` is cached under: the role's entry of ``data_versions``
    (lineage role -> version), else, for data without a version, a new one on every run. This task is never
    cached itself, so an unversioned role's prepare step always runs."""
    from image_emotion.kubeflow import runtime

    return runtime.cache_version(data_versions, role)


def build_pipeline(
    built: Images,
    parallelism: int = CLUSTER.parallelism,
    gpu_type: str = CLUSTER.gpu_type,
    home: str | None = cluster.HOME,
) -> Callable:
    """The pipeline whose components run in ``built``'s images, each ParallelFor ``parallelism`` pods at once,
    the GPU steps asking for one ``gpu_type`` accelerator, ``HOME`` set to ``home`` in every task (``None``: left
    as the environment has it, as for a local run in this machine's processes, where /tmp is every user's).

    ``gpu_type`` is fixed at compile time rather than a run parameter: kfp 2.17's compiler does not pass a
    parameter given to ``set_accelerator_type`` into a ParallelFor (the extraction steps inside the loops then fail
    to resolve it)."""
    c = build_components(built)
    # a pipeline-internal step (not in components/: it only turns a parameter into a cache key)
    version_op = dsl.component(data_version_op, base_image=built.cpu, install_kfp_package=False)
    checkpoint_root = f"{cluster.WORK_MOUNT}/checkpoints"

    @dsl.pipeline(name=PIPELINE_NAME, description="Image emotion: seeds 000, 002 and 001 end to end, with a report")
    def image_emotion_pipeline(
        params_yaml: str,
        mlflow_tracking_uri: str = "",
        extraction_shards: int = CLUSTER.extraction_shards,
        workers: int = CLUSTER.workers,
        gpus_per_worker: int = CLUSTER.gpus_per_worker,
        data_pvc: str = CLUSTER.data_pvc,
        work_pvc: str = CLUSTER.work_pvc,
        mlflow_secret: str = CLUSTER.mlflow_secret,
        s3_secret: str = CLUSTER.s3_secret,
        gpu_tolerations: list = CLUSTER.gpu_tolerations,
        gpu_node_selector: dict = CLUSTER.gpu_node_selector,
        data_dir: str = cluster.DATA_MOUNT,
        checkpoint_root: str = checkpoint_root,
        data_versions: dict = {},  # noqa: B006 - kfp reads the default from the signature; never mutated
    ):
        p = _Platform(data_pvc, work_pvc, mlflow_secret, s3_secret, gpu_type, gpu_tolerations, gpu_node_selector, home)
        common = {"params_yaml": params_yaml, "mlflow_tracking_uri": mlflow_tracking_uri, "data_dir": data_dir}
        training = {**common, "checkpoint_root": checkpoint_root}

        def prepare(role: Any, what: str) -> dsl.PipelineTask:
            """The prepare step of ``role``, its data version an input: kfp's cache key covers params, inputs and
            image, never the data volume, so without it new data loaded there would hit the cache and train on
            the old manifest. The version comes from a task that is never cached: the role's entry, or a new
            value each run for a role without one (then the prepare step never hits the cache)."""
            version = p.small(version_op(data_versions=data_versions, role=role)).set_caching_options(False)
            version.set_display_name(f"data version of {what}")
            task = p.cpu(c["prepare_op"](role=role, data_version=version.output, **common))
            return task.set_display_name(f"prepare {what}")

        objects = p.gpu(c["pretrain_objects_op"](**training), checkpoints=True)
        regions = prepare("detector", "detector data")
        main = prepare("main", "main data")
        detector_inputs = {"dataset": regions.outputs["dataset"], "objects": objects.outputs["objects"], **training}
        with dsl.If(workers > 1, name="detector-on-several-pods"):  # a Trainer v2 TrainJob of `workers` GPU pods
            from image_emotion.kubeflow import trainjob

            job = p.job(
                c["finetune_detector_job_op"](
                    image=built.cuda,
                    workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    data_pvc=data_pvc,
                    work_pvc=work_pvc,
                    mlflow_secret=mlflow_secret,
                    s3_secret=s3_secret,
                    gpu_type=gpu_type,
                    gpu_tolerations=gpu_tolerations,
                    gpu_node_selector=gpu_node_selector,
                    **detector_inputs,
                )
            )
            # the launcher's own pod (the downward API): each attempt names its TrainJob after it and owns it
            for env_name, field_path in trainjob.LAUNCHER_FIELDS.items():
                kubernetes.use_field_path_as_env(job, env_name, field_path)
        with dsl.Else(name="detector-on-one-gpu"):
            single = p.gpu(c["finetune_detector_op"](**detector_inputs), checkpoints=True)
        detector = dsl.OneOf(job.outputs["detector"], single.outputs["detector"])  # the branch that ran
        # the main set's extraction split over GPU pods, each a part cache; the merge is the unsharded cache
        shard_indices = p.small(c["shard_indices_op"](shards=extraction_shards))
        with dsl.ParallelFor(items=shard_indices.output, name="extraction-shards", parallelism=parallelism) as shard:
            part = p.gpu(
                c["extract_regions_op"](
                    detector=detector,
                    objects=objects.outputs["objects"],
                    dataset=main.outputs["dataset"],
                    shard=shard,
                    shards=extraction_shards,
                    **common,
                )
            ).set_display_name("extract a shard of the main data")
        features = p.cpu(c["merge_features_op"](parts=dsl.Collected(part.outputs["features"])))
        classifier = p.gpu(
            c["train_classifier_op"](main=main.outputs["dataset"], features=features.outputs["features"], **common)
        )
        metric = p.gpu(c["train_metric_op"](main=main.outputs["dataset"], **common))
        sets = p.small(c["set_roles_op"](params_yaml=params_yaml, sets="transfer")).output  # params_yaml's, once
        with dsl.ParallelFor(items=sets, name="transfer-sets", parallelism=parallelism) as set_name:
            small = prepare(set_name, "transfer set")
            small_features = p.gpu(
                c["extract_regions_op"](
                    detector=detector, objects=objects.outputs["objects"], dataset=small.outputs["dataset"], **common
                ),
            )
            transfer = p.cpu(
                c["transfer_cv_op"](
                    set_name=set_name,
                    dataset=small.outputs["dataset"],
                    features=small_features.outputs["features"],
                    classifier=classifier.outputs["classifier"],
                    **common,
                )
            )
            small_retrieval = p.cpu(
                c["retrieve_transfer_op"](
                    set_name=set_name, dataset=small.outputs["dataset"], model=metric.outputs["model"], **common
                )
            )
        generative_sets = p.small(c["set_roles_op"](params_yaml=params_yaml, sets="generative")).output
        with dsl.ParallelFor(items=generative_sets, name="generative-sets", parallelism=parallelism) as role:
            other = prepare(role, "generative set")
        generative = p.gpu(
            c["train_generative_op"](
                main=main.outputs["dataset"], sets=dsl.Collected(other.outputs["dataset"]), **training
            ),
            checkpoints=True,
        )
        generative_evaluation = p.cpu(
            c["evaluate_generative_op"](
                main=main.outputs["dataset"],
                sets=dsl.Collected(other.outputs["dataset"]),
                model=generative.outputs["model"],
                **common,
            )
        )
        evaluation = p.cpu(
            c["evaluate_op"](
                main=main.outputs["dataset"],
                features=features.outputs["features"],
                classifier=classifier.outputs["classifier"],
                transfer=dsl.Collected(transfer.outputs["result"]),
                **common,
            )
        )
        retrieval = p.cpu(c["retrieve_op"](main=main.outputs["dataset"], model=metric.outputs["model"], **common))
        p.cpu(
            c["report_op"](
                prepared_detector=regions.outputs["metrics"],
                prepared_main=main.outputs["metrics"],
                prepared_transfer=dsl.Collected(small.outputs["metrics"]),
                detector=detector,
                classifier=classifier.outputs["classifier"],
                transfer=dsl.Collected(transfer.outputs["result"]),
                evaluation=evaluation.outputs["metrics"],
                plots=evaluation.outputs["plots"],
                retrieval=retrieval.outputs["metrics"],
                retrieval_transfer=dsl.Collected(small_retrieval.outputs["result"]),
                retrieval_plots=retrieval.outputs["plots"],
                generative=generative_evaluation.outputs["metrics"],
                generative_plots=generative_evaluation.outputs["plots"],
                **common,
            )
        )
        # the validation accuracy is the component's return value ("Output"); test is only reported
        good_enough = evaluation.outputs["Output"] >= p.small(c["min_accuracy_op"](params_yaml=params_yaml)).output
        with dsl.If(good_enough, name="good-enough-to-register"):
            p.register(
                c["register_op"](
                    main=main.outputs["dataset"],
                    detector=detector,
                    classifier=classifier.outputs["classifier"],
                    evaluation=evaluation.outputs["metrics"],
                    **common,
                )
            )
        p.register(
            c["register_metric_op"](
                main=main.outputs["dataset"],
                model=metric.outputs["model"],
                index=retrieval.outputs["index"],
                retrieval=retrieval.outputs["metrics"],
                **common,
            )
        )
        p.register(
            c["register_generative_op"](
                main=main.outputs["dataset"],
                model=generative.outputs["model"],
                evaluation=generative_evaluation.outputs["metrics"],
                **common,
            )
        )

    return image_emotion_pipeline


SYNTHETIC_VERSION = "synthetic"  # a drawn set: params_yaml (already in the cache key) determines it


def data_versions_of(config: Config, project: str | Path | None = None) -> dict[str, str]:
    """The version of the data of every role a prepare step reads (lineage role -> version), as
    ``tracking.lineage`` finds it under ``project`` (default: the working directory): DVC's hash from the root's
    ``.dvc`` file or ``dvc.lock``. A synthetic role is ``SYNTHETIC_VERSION`` (drawn in the pod from the params).
    Left out, so its prepare step runs uncached: a role whose root is not here, is not under DVC (the listing
    digest of a local copy says nothing of the volume's), or differs from what DVC recorded (``dvc add`` it)."""
    from image_emotion.tracking import lineage

    project = Path(project or Path.cwd())
    roles = ["detector", "main", *runtime.set_roles(config, "transfer"), *runtime.set_roles(config, "generative")]
    roots = lineage.dataset_roots(config)
    found: dict[str, str] = {}
    for role in roles:
        name = runtime.lineage_role(role)
        if runtime.role_config(config, role).data.dataset == "synthetic":
            found[name] = SYNTHETIC_VERSION
        elif (project / roots[name]).exists():
            version = lineage.data_version(roots[name], project, f"{name} ({lineage.role_setting(name)})")
            if version.source != lineage.UNVERSIONED and not version.changed:
                found[name] = version.digest
    return found


def pipeline_arguments(config: Config, project: str | Path | None = None) -> dict[str, Any]:
    """Pipeline arguments from a config: its params, once (the graph reads the sets and the threshold from them),
    and the data version of each role (``data_versions``, read under ``project``: the working directory)."""
    return {
        "params_yaml": yaml.safe_dump(config.to_dict(), sort_keys=True),
        "data_versions": data_versions_of(config, project),
    }


def compile_pipeline(
    out: str | Path = DEFAULT_PIPELINE_YAML,
    registry: str = CLUSTER.registry,
    parallelism: int = CLUSTER.parallelism,
    gpu_type: str = CLUSTER.gpu_type,
    built: Images | None = None,
) -> Path:
    """Compile the pipeline to YAML (the file checked in under pipelines/), its images tagged from this source in
    ``registry``, or ``built`` (e.g. named by digest)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(built or images(registry), parallelism, gpu_type), str(out))
    return out


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set while the block runs (the tasks of a local run read them), restored after."""
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _local_one_of_artifacts() -> Iterator[None]:
    """kfp.local (2.17) resolves a DAG's artifact output from exactly one producer, so a ``dsl.OneOf`` of artifacts
    (the detector of the If/Else branches) fails there ("Expected 1 artifact in ArtifactSelectorSpec"); the cluster
    takes the branch that ran. For the local run: the one of its producers that ran, as kfp.local already does
    for a OneOf of parameters."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    original = OrchestratorUtils.__dict__["get_dag_output_artifacts"]

    def one_of(cls: type, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        outputs = {}
        for key, selectors in dag_outputs_spec.artifacts.items():
            found = []
            for selector in selectors.artifact_selectors:
                try:
                    found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
                except (KeyError, ValueError):  # a branch that did not run
                    continue
            if len(found) != 1:
                raise ValueError(f"{len(found)} of the producers of DAG output {key!r} ran, expected exactly one")
            outputs[key] = found[0]
        return outputs

    OrchestratorUtils.get_dag_output_artifacts = classmethod(one_of)
    try:
        yield
    finally:
        OrchestratorUtils.get_dag_output_artifacts = original


def run_local(
    config: Config,
    pipeline_root: str | Path,
    mlflow_tracking_uri: str = "",
    extraction_shards: int = CLUSTER.extraction_shards,
) -> dict[str, Any]:
    """Run the whole pipeline here with ``kfp.local.SubprocessRunner`` (no containers; volumes, secrets and GPU
    requests ignored, HOME left as it is; relative data paths resolve in the current directory, checkpoints under
    the pipeline root), the main set's extraction split in ``extraction_shards``, the detector fine-tuned in one
    process (the ``workers`` default: the Else branch); a failing task raises. Returns the run's directory of task
    outputs."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    before = set(Path(pipeline_root).glob("*")) if Path(pipeline_root).is_dir() else set()
    run_id = f"local-{uuid.uuid4().hex}"  # what the pod label gives on a cluster: one id for every task
    with environment(**{cluster.RUN_ID_ENV: run_id}), _local_one_of_artifacts():
        build_pipeline(images(), home=None)(
            **pipeline_arguments(config),
            mlflow_tracking_uri=mlflow_tracking_uri,
            extraction_shards=extraction_shards,
            data_dir=os.getcwd(),
            checkpoint_root=str(Path(pipeline_root).resolve() / "checkpoints"),
        )
    (run_dir,) = set(Path(pipeline_root).glob("*")) - before - {Path(pipeline_root) / "checkpoints"}
    return {"pipeline_root": str(pipeline_root), "run_dir": str(run_dir), "run_id": run_id}
