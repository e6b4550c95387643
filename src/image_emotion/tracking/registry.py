"""The MLflow model registry: who is champion, and whether a new version should take its place.

A model's score is one measure (``key``: the seed-000 model's test accuracy, the retrieval model's test mAP8),
stored as a tag of each registered version (``tag``) with the dataset and label set it was measured on.

Safe when pipeline runs promote at once and when a ``register`` is retried:

- The champion is read, compared and set while holding a lock in the registry itself: the registered model
  ``<name>.promotion-lock``, whose creation is atomic in every MLflow store (a unique name: the second creator gets
  RESOURCE_ALREADY_EXISTS). A holder that died leaves a lock older than ``LOCK_STALE_S``, which the next one
  removes. After setting the alias the champion is read again; were it changed meanwhile (a lock broken as
  stale), the decision is made again.
- A retried ``register`` of the same run, model files and evaluation finds its version by the run id and a
  fingerprint of both (the version tag ``model_fingerprint``) instead of registering another.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from image_emotion.errors import ImageEmotionError
from image_emotion.files import files_fingerprint, fingerprint

LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_S = 600.0  # a promotion takes seconds; a lock this old belongs to a holder that died
LOCK_WAIT_S = 300.0


class RegistryLockTimeout(ImageEmotionError):
    """Another promotion held the registry lock for longer than we wait."""


def _error_code(error: Exception) -> str:
    return getattr(error, "error_code", "")


@contextmanager
def promotion_lock(client, name: str, wait_s: float = LOCK_WAIT_S, stale_s: float = LOCK_STALE_S) -> Iterator[str]:
    """Hold the promotion lock of registered model ``name`` while the block runs; yields the owner id."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"owner": owner, "acquired_at": f"{time.time():.3f}"},
                description=f"held while a pipeline run decides {name}'s champion; removed when done",
            )
            break
        except MlflowException as e:
            if _error_code(e) not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            held = client.get_registered_model(lock)
            if time.time() - float(held.tags.get("acquired_at", "0")) > stale_s:
                client.delete_registered_model(lock)  # its holder died: a promotion never takes this long
                continue
        except MlflowException as e:
            if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":  # released meanwhile: try again at once
                raise
            continue
        if time.monotonic() > deadline:
            raise RegistryLockTimeout(
                f"the registry lock {lock!r} was held by {held.tags.get('owner')} for over {wait_s:.0f} s; "
                f"if no pipeline is registering {name}, delete the registered model {lock!r} and retry"
            )
        time.sleep(random.uniform(0.02, 0.2))
    try:
        yield owner
    finally:
        try:
            if client.get_registered_model(lock).tags.get("owner") == owner:
                client.delete_registered_model(lock)
        except MlflowException as e:
            if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":
                raise


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    minimum: float,
    key: str = "accuracy",
    measure: str = "test accuracy",
    setting: str = "register.min_accuracy",
) -> tuple[bool, str]:
    """Whether ``candidate`` (``key``, dataset, label_set) should become champion, and why."""
    score = candidate[key]
    if score < minimum:
        return False, f"{measure} {score:.4f} is below {setting} {minimum}"
    if champion is None:
        return True, "no champion yet"
    if (champion.get("dataset"), champion.get("label_set")) != (candidate["dataset"], candidate["label_set"]):
        return False, (
            f"champion is for {champion.get('dataset')}/{champion.get('label_set')}, not comparable; "
            "promote by hand if intended"
        )
    if score > champion[key]:
        return True, f"{measure} {score:.4f} beats the champion's {champion[key]:.4f}"
    return False, f"{measure} {score:.4f} does not beat the champion's {champion[key]:.4f}"


def current_champion(client, name: str, key: str = "accuracy", tag: str = "test_accuracy") -> dict[str, Any] | None:
    """The champion's version, score (``key``, read from the version's ``tag``), dataset and label set, or None
    when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return {
        "version": str(version.version),
        key: float(version.tags.get(tag, "nan")),
        "dataset": version.tags.get("dataset"),
        "label_set": version.tags.get("label_set"),
    }


def existing_version(client, name: str, run_id: str, model_fingerprint: str):
    """The version of ``name`` this run already registered for the same model files (a retried ``register``),
    or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [v for v in versions if v.tags.get("model_fingerprint") == model_fingerprint]
    return min(same, key=lambda v: int(v.version)) if same else None


def register_version(mlflow, log_model: Callable[[], str], name: str, tags: dict[str, str], model_fingerprint: str):
    """Register the model ``log_model()`` logs as a version of ``name`` with ``tags``, unless the active run
    registered the same model files already (then that version, and nothing is logged). Returns (version, newly
    registered)."""
    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    found = existing_version(client, name, run.info.run_id, model_fingerprint) if run is not None else None
    if found is not None:
        return found, False
    version = mlflow.register_model(log_model(), name, tags={**tags, "model_fingerprint": model_fingerprint})
    return version, True


def promote(client, name: str, version: str, candidate: dict[str, Any], minimum: float, key: str, tag: str,
            measure: str, setting: str) -> tuple[dict[str, Any] | None, bool, str]:  # fmt: skip
    """Under the registry lock: alias the version ``challenger``; read the champion, decide, set ``champion`` when
    the candidate wins; read it back and decide again if it changed meanwhile. Returns (champion before, promoted,
    reason). Every alias is set under the lock: MLflow's alias upsert is not atomic (two at once on PostgreSQL
    fail with a unique-key violation)."""
    with promotion_lock(client, name):
        client.set_registered_model_alias(name, "challenger", version)
        while True:
            champion = current_champion(client, name, key, tag)
            if champion is not None and champion["version"] == str(version):  # a retry after promoting
                return champion, True, "already champion (a retried register)"
            promoted, reason = decide(candidate, champion, minimum, key, measure, setting)
            if promoted:
                client.set_registered_model_alias(name, "champion", version)
            after = current_champion(client, name, key, tag)
            expected = str(version) if promoted else (champion["version"] if champion else None)
            if (after["version"] if after else None) == expected:
                return champion, promoted, reason


def register_and_promote(
    mlflow,
    log_model: Callable[[], str],
    model_files: Sequence[str | Path],
    name: str,
    candidate: dict[str, Any],
    minimum: float,
    key: str = "accuracy",
    tag: str = "test_accuracy",
    measure: str = "test accuracy",
    setting: str = "register.min_accuracy",
) -> dict[str, Any]:
    """Register the model ``log_model()`` logs (it returns its URI) as a new version of ``name`` (tagged with its
    score, dataset and label set), alias it ``challenger``, and ``champion`` when ``decide`` says so (``promote``:
    safe against concurrent promotions); the decision is tagged on the active run and its score logged. A retried
    call in the same run with the same ``model_files`` and evaluation reuses its version (nothing is logged again).
    Returns the decision record (the stage's metrics file)."""
    client = mlflow.MlflowClient()
    tags = {tag: str(candidate[key]), "dataset": candidate["dataset"], "label_set": candidate["label_set"]}
    identity = fingerprint(files_fingerprint(*model_files), tags)  # the same files with the same evaluation
    version, _ = register_version(mlflow, log_model, name, tags, identity)
    champion, promoted, reason = promote(client, name, version.version, candidate, minimum, key, tag, measure, setting)
    result = {
        "model_name": name,
        "version": int(version.version),
        f"candidate_{key}": candidate[key],
        f"champion_{key}_before": champion[key] if champion else None,
        "champion_version_before": int(champion["version"]) if champion else None,
        "promoted": promoted,
        "reason": reason,
        "model_uri": f"models:/{name}/{version.version}",
    }
    mlflow.set_tags({"promoted": promoted, "reason": reason[:500], "model_version": version.version})
    scores = {f"candidate_{key}": candidate[key], f"champion_{key}_before": result[f"champion_{key}_before"]}
    mlflow.log_metrics({k: float(v) for k, v in scores.items() if v is not None})
    return result
