"""The images proved end to end: the pipeline's components run in the built images, as a cluster would run them.

``run_in_images`` runs the whole kfp pipeline (the graph ``compile-pipeline`` compiles) with
``kfp.local.DockerRunner``: every task is a container of the CPU or CUDA image named *by digest* as the registry
gave it, started through the Docker API (podman's ``system service`` where no Docker daemon runs), as the images'
uid 10001, on the host network, logging to a tracking server over HTTP. Nothing of the host's Python runs a
component: kfp.local only orders the tasks and passes their artifacts through the mounted pipeline root.

Shims, each because kfp.local or podman gives no public option, none touching kfp's code:
- ``_one_of_artifacts`` (pipeline.py): kfp.local resolves a ``dsl.OneOf`` of artifacts from one producer only.
- ``_podman_keeps_exited_containers``: kfp's DockerRunner starts every container with ``auto_remove=True`` (not
  a run argument one can change) and reads a container that is gone before its exit code as a success
  (``except docker.errors.NotFound: return 0``). Podman removes an exited container before that read (measured:
  a container that exits 3 is reported 0), so a failing component would pass. Here containers start without
  auto-removal and are removed once their exit code has been read, so a failing component fails the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from image_emotion.config import Config
from image_emotion.errors import ImageEmotionError
from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.builder import Engine
from image_emotion.kubeflow.images import KINDS, Images
from image_emotion.kubeflow.registry import DEFAULT_PORT, manifest_digest, split_reference

REMOVE_AFTER_WAIT = "image-emotion.remove-after-wait"


class ContainerCheckError(ImageEmotionError):
    """The container check could not run, or what it ran did not hold."""


@contextlib.contextmanager
def docker_api(engine: Engine, directory: Path, seconds: float = 30) -> Iterator[str]:
    """A Docker API endpoint for ``engine``: ``DOCKER_HOST`` as it is for docker, else podman's ``system
    service`` on a unix socket in ``directory`` (stopped on exit). Yields the ``DOCKER_HOST`` value."""
    if engine.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    if engine.name != "podman":
        raise ContainerCheckError(f"{engine.name} cannot run containers; install podman (or start a Docker daemon)")
    directory.mkdir(parents=True, exist_ok=True)
    path = (directory / "podman.sock").resolve()
    path.unlink(missing_ok=True)
    log = open(directory / "podman-service.log", "ab")  # noqa: SIM115 - the child keeps it open
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{path}"],
        env={**os.environ, **engine.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + seconds
        while not _accepts(path):
            if service.poll() is not None or time.monotonic() > deadline:
                raise ContainerCheckError(f"podman system service did not start (see {directory}/podman-service.log)")
            time.sleep(0.2)
        yield f"unix://{path}"
    finally:
        service.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.wait(10)
        log.close()


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _podman_keeps_exited_containers() -> Iterator[None]:
    """Containers that kfp starts with ``auto_remove`` are started without it and removed after their exit code is
    read (see the module's docstring: without this, a component that fails under podman is read as a success)."""
    from docker.models.containers import Container, ContainerCollection

    run, wait = ContainerCollection.run, Container.wait

    def run_kept(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("auto_remove", False):
            kwargs["labels"] = {**(kwargs.get("labels") or {}), REMOVE_AFTER_WAIT: "1"}
        return run(self, *args, **kwargs)

    def wait_then_remove(self: Any, **kwargs: Any) -> Any:
        result = wait(self, **kwargs)
        if (self.labels or {}).get(REMOVE_AFTER_WAIT):
            self.remove()
        return result

    ContainerCollection.run, Container.wait = run_kept, wait_then_remove
    try:
        yield
    finally:
        ContainerCollection.run, Container.wait = run, wait


def pipeline_images(pipeline_yaml: Path) -> set[str]:
    """Every image the compiled pipeline's executors name."""
    spec = next(yaml.safe_load_all(pipeline_yaml.read_text()))
    return {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}


def verify_pipeline_images(pipeline_yaml: Path, built: Images) -> dict[str, str]:
    """Check that ``pipeline_yaml`` names this source's images by the digests the registry gives their tags now;
    returns kind -> digest. A ``ContainerCheckError`` in one line names the first image that differs."""
    current = {kind: manifest_digest(built.tagged(kind)) for kind in KINDS}
    for image in sorted(pipeline_images(pipeline_yaml)):
        if "@" not in image:
            raise ContainerCheckError(f"{pipeline_yaml} names {image} by tag; compile it with --by-digest")
        _, _, digest = split_reference(image)
        if not image.startswith(built.repository + "@") or digest not in current.values():
            raise ContainerCheckError(
                f"{pipeline_yaml} names {image}, but the registry's {built.tagged('cpu')} is {current['cpu']} and "
                f"{built.tagged('cuda')} is {current['cuda']}: rebuild and push the images, then compile again"
            )
    return current


def failing_component_fails(built: Images, pipeline_root: Path, docker_host: str) -> str:
    """Run one component that exits 3 in the CPU image: the run must fail (what the auto-removal shim is for).
    Returns the error kfp.local raised."""
    from kfp import dsl, local

    from image_emotion.kubeflow.pipeline import environment

    @dsl.component(base_image=built.cpu, install_kfp_package=False)
    def exits_three():  # no annotation: kfp reads a return annotation as an output
        raise SystemExit(3)

    pipeline_root.mkdir(parents=True, exist_ok=True)
    os.chmod(pipeline_root, 0o777)
    runner = local.DockerRunner(network_mode="host")
    with environment(DOCKER_HOST=docker_host), _podman_keeps_exited_containers():
        local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
        try:
            exits_three()
        except RuntimeError as exc:
            return re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0])  # without kfp's colours
    raise ContainerCheckError("a component that exits 3 in the image was reported a success: exit codes are lost")


SITE = "/opt/venv/lib/python3.11/site-packages"
CUDA_ONLY = (
    f"{SITE}/nvidia",
    f"{SITE}/triton",
    f"{SITE}/torch/lib/libtorch_cuda.so",
    f"{SITE}/torch/lib/libc10_cuda.so",
)


def cuda_library_bytes(engine: Engine, image: str) -> int:
    """Bytes of ``image`` that only a GPU loads (the NVIDIA libraries, triton, torch's CUDA kernels)."""
    out = engine.run(
        "run", "--rm", image, "sh", "-c", f"du -scb {' '.join(CUDA_ONLY)} 2>/dev/null | tail -1", capture=True
    )
    return int(out.split()[0])


@dataclass(frozen=True)
class ContainerRun:
    """What the pipeline's run in the images produced."""

    run_dir: Path
    run_id: str
    tasks: list[str]  # the task folders, one a component run (loops' iterations included)
    seconds: float


def run_in_images(
    config: Config,
    built: Images,
    pipeline_root: Path,
    tracking_uri: str,
    docker_host: str,
    credentials: dict[str, str] | None = None,
) -> ContainerRun:
    """Run the whole pipeline with ``kfp.local.DockerRunner`` in ``built``'s images (named by digest) through the
    Docker API at ``docker_host``; a failing component raises. The pipeline root is made writable for the images'
    user (the containers write their outputs into it). ``credentials``: the tracking server's client variables
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), given to every container."""
    from kfp import local

    from image_emotion.kubeflow.pipeline import _local_one_of_artifacts, build_pipeline, environment, pipeline_arguments

    pipeline_root.mkdir(parents=True, exist_ok=True)
    os.chmod(pipeline_root, 0o777)
    run_id = f"containers-{uuid.uuid4().hex[:12]}"
    before = set(pipeline_root.iterdir())
    runner = local.DockerRunner(network_mode="host", environment={cluster.RUN_ID_ENV: run_id, **(credentials or {})})
    start = time.monotonic()
    umask = os.umask(0)  # folders kfp.local makes here are writable by the containers' user too
    try:
        with environment(DOCKER_HOST=docker_host), _local_one_of_artifacts(), _podman_keeps_exited_containers():
            local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
            build_pipeline(built)(
                **pipeline_arguments(config),
                mlflow_tracking_uri=tracking_uri,
                data_dir=cluster.DATA_MOUNT,  # the synthetic sets are drawn inside their artifacts
                checkpoint_root=str(pipeline_root.resolve() / "checkpoints"),
            )
    finally:
        os.umask(umask)
    seconds = time.monotonic() - start
    (run_dir,) = set(pipeline_root.iterdir()) - before - {pipeline_root / "checkpoints"}
    tasks = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.rglob("executor_output.json"))
    return ContainerRun(run_dir, run_id, tasks, round(seconds, 1))


GPU_STAGES = (
    "pretrain_objects",
    "finetune_detector",
    "extract_regions",
    "train_classifier",
    "train_metric",
    "train_generative",
)  # the steps the pipeline runs in the CUDA image (pipeline.py: ``p.gpu``)


def verify_registrations(tracking_uri: str, config: Config, built: Images) -> dict[str, Any]:
    """What a fresh tracking server says the containers did: each registered model's champion version, and the
    image each stage run recorded (``$IMAGE_EMOTION_IMAGE``, set in the image): the GPU steps the CUDA image, every
    other step the CPU one. A ``ContainerCheckError`` names what differs."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    models = {}
    names = (config.register.model_name, config.register.retrieval_model_name, config.register.generative_model_name)
    for name in names:
        try:
            champion = client.get_model_version_by_alias(name, "champion")
        except MlflowException as exc:
            raise ContainerCheckError(f"the tracking server has no {name}@champion after the run: {exc}") from None
        models[name] = {"version": champion.version, "aliases": list(champion.aliases), "run_id": champion.run_id}
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage != ''", max_results=1000)
    recorded = {run.data.tags["stage"]: run.data.tags.get("image", "") for run in runs}
    wrong = {
        stage: image
        for stage, image in recorded.items()
        if image != built.tagged("cuda" if stage.split("@")[0] in GPU_STAGES else "cpu")
    }
    if not recorded or wrong:
        raise ContainerCheckError(f"stage runs not recorded from the image their step names: {wrong or 'no runs'}")
    return {"models": models, "stage_images": recorded}


def check(
    work: Path,
    root: Path,
    engine_name: str = "auto",
    base: str = "debian",
    port: int = DEFAULT_PORT,
    wheels: Path | None = None,
) -> dict[str, Any]:
    """The whole container check, as ``.ci/run`` runs it: a local registry; both images built (on the Debian base
    made from Debian's packages by default), pushed, and named by digest in a freshly compiled pipeline; a fresh
    tracking stack; the whole pipeline run in the images on the smoke configuration; the registrations verified.
    Returns every figure (also written to ``work/container-check.json``). A registry this call starts is stopped
    at the end (its storage stays). ``wheels``: the wheel cache (default: the one this machine's checkouts share,
    ``builder.default_wheelhouse``). Once the check holds, this machine's older images of the repository are
    removed (they stay in the registry)."""
    from image_emotion.kubeflow import builder
    from image_emotion.kubeflow.registry import LocalRegistry

    work.mkdir(parents=True, exist_ok=True)
    engine = builder.find_engine(work, engine_name)
    registry = LocalRegistry(work / "registry", port)
    started_here = registry.running() is None  # one the user started stays up; ours stops with the check
    address = registry.start().address
    try:
        return _check(work, root, engine, address, base, wheels or builder.default_wheelhouse())
    finally:
        if started_here:
            registry.stop()


def _check(work: Path, root: Path, engine: Engine, address: str, base: str, wheels: Path) -> dict[str, Any]:
    """``check``'s steps after the registry at ``address`` is up."""
    import json

    from image_emotion.config import load_config
    from image_emotion.files import write_text_atomic
    from image_emotion.kubeflow import builder
    from image_emotion.kubeflow.images import images
    from image_emotion.kubeflow.pipeline import compile_pipeline, environment
    from image_emotion.smoke import SMOKE_OVERRIDES
    from image_emotion.tracking.stack import TrackingStack, client_env, free_port

    began = time.monotonic()
    built = images(f"{address}/image-emotion", root)
    wheelhouse = wheels if engine.name != "docker" else None
    result: dict[str, Any] = {
        "build": builder.build_images(engine, built, base, root, work, wheelhouse, push_them=True)
    }
    built = built.by_digest(result["build"]["digests"])
    pipeline_yaml = compile_pipeline(work / "pipeline.yaml", built=built)
    result["pipeline"] = {"yaml": str(pipeline_yaml), "images": sorted(pipeline_images(pipeline_yaml))}
    verify_pipeline_images(pipeline_yaml, built)
    as_user = engine.run("run", "--rm", built.tagged("cpu"), "sh", "-c", "id -u && image-emotion --help", capture=True)
    if as_user.splitlines()[0] != str(cluster.UID):
        raise ContainerCheckError(f"{built.tagged('cpu')} runs as uid {as_user.splitlines()[0]}, not {cluster.UID}")
    result["help_as_uid"] = as_user.splitlines()[0]
    result["build"]["cuda_library_bytes"] = cuda_library_bytes(engine, built.tagged("cpu"))
    config = load_config(root / "params.yaml", SMOKE_OVERRIDES)
    stack_dir = work / f"tracking-{uuid.uuid4().hex[:8]}"  # a fresh registry: what it holds after the run is ours
    with TrackingStack(stack_dir, port=free_port()) as stack, docker_api(engine, work) as docker_host:
        for kind in KINDS:  # what a node does: pull by digest from the registry
            insecure = ["--tls-verify=false"] if engine.name == "podman" else []
            engine.run("pull", "--quiet", *insecure, built.of(kind), capture=True, what=f"pull {built.of(kind)}")
        result["failing_component"] = failing_component_fails(built, work / "failure-root", docker_host)
        credentials = client_env(stack_dir)  # the stack runs with basic auth: the containers log in
        run = run_in_images(config, built, work / "pipeline-root", stack.tracking_uri, docker_host, credentials)
        result["run"] = {"seconds": run.seconds, "tasks": run.tasks, "run_dir": str(run.run_dir)}
        with environment(**credentials):
            result["tracking"] = verify_registrations(stack.tracking_uri, config, built)
    result["removed_older_images"] = builder.remove_older_images(engine, built)
    result["seconds"] = round(time.monotonic() - began, 1)
    write_text_atomic(work / "container-check.json", json.dumps(result, indent=2))
    return result
