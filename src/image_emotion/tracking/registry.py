"""The MLflow model registry: who is champion, and whether a new version should take its place.

A model's score is one measure on its *validation* split (``tag``: the seed-000 and generative models' validation
accuracy, the retrieval model's validation mAP8), stored as a tag of each registered version with the dataset and
label set it was measured on. Test figures are only reported (tags and the decision record): choosing the
champion by test accuracy would, over repeated runs, select on the test set. Versions registered before their
validation score was recorded carry no such tag and are never compared with.

Safe when pipeline runs promote at once, crash, and retry:

- **The champion converges to the best version.** The champion is a function of what the registry records: of
  every version scored on the candidate's dataset and label set at or above the minimum, the highest score, ties
  to the earliest version (``best_version``). Every promoter, after registering its version, sets ``champion``
  to that best version and reads the registry again, until a read after its own last write shows the alias on
  the best version. Whatever the interleaving (a promoter that died between its decision and its write, two
  holders of a broken lock, a stale write landing last), the last writer re-derives from a registry that holds
  every version registered before it read, so the final champion is the best of them.
- **A lock keeps promoters from contending** (MLflow's alias upsert is not atomic: two at once on PostgreSQL
  fail with a unique-key violation, which is retried): the registered model ``<name>.promotion-lock``, whose
  creation is atomic in every MLflow store. A holder that died leaves a lock older than ``LOCK_STALE_S``, which
  a waiter removes; waiters wait longer than that (``LOCK_WAIT_S``), so a crash delays the next promotions and
  fails none. Correctness no longer rests on the lock: two holders at once still converge.
- A ``register`` of model files and an evaluation already registered finds that version by a fingerprint of
  both (the version tag ``model_fingerprint``) instead of registering another: a retried step, and a re-run whose
  training steps hit kfp's (or DVC's) cache, which hands the register step the same files again.
"""

from __future__ import annotations

import contextlib
import math
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
LOCK_STALE_S = 120.0  # a promotion takes seconds; a lock this old belongs to a holder that died
LOCK_WAIT_S = 300.0  # longer than LOCK_STALE_S: after a crash the waiters break the lock instead of timing out
CONVERGE_ATTEMPTS = 100  # set-and-read rounds before giving up (each a few requests; contention ends in a few)


class RegistryLockTimeout(ImageEmotionError):
    """Another promotion held the registry lock for longer than we wait."""


class PromotionDidNotSettle(ImageEmotionError):
    """The champion alias kept changing under us for ``CONVERGE_ATTEMPTS`` rounds."""


def _error_code(error: Exception) -> str:
    return getattr(error, "error_code", "")


def _lost_race(error: Exception) -> bool:
    """A create that lost a race inside the server: with authentication on, MLflow inserts the new model's
    permission row after the model itself, and two creators at once on PostgreSQL make the second insert a unique-key
    violation, answered as BAD_REQUEST rather than RESOURCE_ALREADY_EXISTS (seen 1 in ~160 contended creates)."""
    return _error_code(error) == "BAD_REQUEST" and "UniqueViolation" in str(error)


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
            if _error_code(e) not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST") and not _lost_race(e):
                raise
        try:
            held = client.get_registered_model(lock)
            if time.time() - float(held.tags.get("acquired_at", "0")) > stale_s:
                # its holder died: a promotion never takes this long. Several waiters break it at once: the others'
                # deletes fail (on PostgreSQL a foreign-key violation), and they try again
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(lock)
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
    measure: str = "validation accuracy",
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


def current_champion(client, name: str, key: str = "accuracy", tag: str = "val_accuracy") -> dict[str, Any] | None:
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


def existing_version(client, name: str, model_fingerprint: str):
    """The earliest version of ``name`` registered for the same model files and evaluation (by any run: a
    retried ``register``, or a re-run whose training was served from a cache), or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.model_fingerprint = '{model_fingerprint}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register_version(mlflow, log_model: Callable[[], str], name: str, tags: dict[str, str], model_fingerprint: str):
    """Register the model ``log_model()`` logs as a version of ``name`` with ``tags``, unless the same model files
    and evaluation are registered already (then that version, and nothing is logged). Returns (version, newly
    registered)."""
    found = existing_version(mlflow.MlflowClient(), name, model_fingerprint)
    if found is not None:
        return found, False
    version = mlflow.register_model(log_model(), name, tags={**tags, "model_fingerprint": model_fingerprint})
    return version, True


def _score(version, tag: str) -> float:
    try:
        return float(version.tags.get(tag, "nan"))
    except ValueError:
        return math.nan


def best_version(versions: Sequence[Any], tag: str, minimum: float, dataset: str, label_set: str) -> Any | None:
    """The version that should be champion: of ``versions`` scored (tag ``tag``) on ``dataset``/``label_set``
    at or above ``minimum``, the highest score; ties go to the earliest version (a tie does not replace)."""
    eligible = [
        v for v in versions
        if v.tags.get("dataset") == dataset and v.tags.get("label_set") == label_set
        and not math.isnan(_score(v, tag)) and _score(v, tag) >= minimum
    ]  # fmt: skip
    return max(eligible, key=lambda v: (_score(v, tag), -int(v.version)), default=None)


def _champion_version(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None


def _set_alias(client, name: str, alias: str, version: str, attempts: int = 20) -> None:
    """Set ``alias``, retrying the unique-key violation of two upserts of one alias at once (two holders of a broken
    lock, measured on PostgreSQL)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def converge(client, name: str, tag: str, minimum: float, dataset: str, label_set: str) -> str | None:
    """Set ``champion`` to ``best_version`` of all of ``name``'s versions and read again, until a read after our
    last write shows the alias there; returns that version (None when no version qualifies)."""
    from mlflow.exceptions import MlflowException

    for _ in range(CONVERGE_ATTEMPTS):
        best = best_version(client.search_model_versions(f"name = '{name}'"), tag, minimum, dataset, label_set)
        if best is None:
            return None
        if _champion_version(client, name) == str(best.version):
            return str(best.version)
        try:
            client.set_registered_model_alias(name, "champion", best.version)
        except MlflowException:  # another promoter's upsert of the same alias at the same moment: read again
            time.sleep(random.uniform(0.01, 0.1))
    raise PromotionDidNotSettle(
        f"{name}@champion kept changing for {CONVERGE_ATTEMPTS} rounds; re-run the register stage (it is idempotent)"
    )


def promote(client, name: str, version: str, candidate: dict[str, Any], minimum: float, key: str, tag: str,
            measure: str, setting: str) -> tuple[dict[str, Any] | None, bool, str]:  # fmt: skip
    """Alias the version ``challenger`` and let the champion converge to the best version recorded (see the
    module's docstring), under the registry lock. Returns (champion before, whether this version is champion
    after, reason)."""
    with promotion_lock(client, name):
        _set_alias(client, name, "challenger", version)
        champion = current_champion(client, name, key, tag)
        if champion is not None and champion["version"] == str(version):  # a retry after promoting
            return champion, True, "already champion (the same model and evaluation registered before)"
        promoted, reason = decide(candidate, champion, minimum, key, measure, setting)
        if "not comparable" in reason:  # another dataset's champion: left alone
            return champion, False, reason
        after = converge(client, name, tag, minimum, candidate["dataset"], candidate["label_set"])
    if promoted and after != str(version):  # a better version was registered meanwhile
        reason = f"{measure} {candidate[key]:.4f} beat the champion before, but version {after} scores higher"
    elif not promoted and after == str(version):  # the champion was not the best recorded version
        reason = f"{measure} {candidate[key]:.4f} is the best of the versions recorded"
    return champion, after == str(version), reason


def register_and_promote(
    mlflow,
    log_model: Callable[[], str],
    model_files: Sequence[str | Path],
    name: str,
    candidate: dict[str, Any],
    minimum: float,
    key: str = "accuracy",
    tag: str = "val_accuracy",
    measure: str = "validation accuracy",
    setting: str = "register.min_accuracy",
    reported: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Register the model ``log_model()`` logs (it returns its URI) as a new version of ``name`` (tagged with its
    score, dataset and label set), alias it ``challenger``, and ``champion`` when ``decide`` says so (``promote``:
    safe against concurrent promotions); the decision is tagged on the active run and its score logged. A call
    with ``model_files`` and an evaluation already registered (a retry, or a re-run served from a cache) reuses
    that version (nothing is logged again).
    ``reported`` (e.g. the test accuracy) is tagged and recorded beside the score, never compared. Returns the
    decision record (the stage's metrics file)."""
    client = mlflow.MlflowClient()
    reported = dict(reported or {})
    tags = {
        tag: str(candidate[key]),
        "dataset": candidate["dataset"],
        "label_set": candidate["label_set"],
        **{name: str(value) for name, value in reported.items()},
    }
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
        "compared_on": tag,
        "reported": reported,
    }
    mlflow.set_tags({"promoted": promoted, "reason": reason[:500], "model_version": version.version})
    scores = {f"candidate_{key}": candidate[key], f"champion_{key}_before": result[f"champion_{key}_before"]}
    mlflow.log_metrics({k: float(v) for k, v in scores.items() if v is not None})
    return result
