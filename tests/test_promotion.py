"""Promotion converges to the best recorded version whatever the interleaving: the rule on hand-made versions,
and the interleaving that crowned the worse model (a promoter whose read of the champion went stale while a
better version was promoted) against a real MLflow registry (sqlite store)."""

from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import mlflow
import pytest

from image_emotion.tracking import registry

SET = {"dataset": "synthetic", "label_set": "mikels8"}


def _v(version: int, score: str, **tags: str) -> SimpleNamespace:
    return SimpleNamespace(version=str(version), tags={"val_accuracy": score, **SET, **tags})


def test_best_version_is_the_highest_comparable_score_ties_to_the_earliest():
    versions = [_v(1, "0.50"), _v(2, "0.60"), _v(3, "0.60"), _v(4, "0.90", dataset="fi"), _v(5, "0.7", label_set="b")]
    assert registry.best_version(versions, "val_accuracy", 0.0, **SET).version == "2"  # 4, 5: other sets; 3 ties
    assert registry.best_version(versions, "val_accuracy", 0.65, **SET) is None  # none reaches the minimum
    versions.append(_v(6, "not a number"))
    versions.append(_v(7, "0.61"))
    assert registry.best_version(versions, "val_accuracy", 0.0, **SET).version == "7"


def _register(client, name: str, score: float) -> str:
    """A version of ``name`` scored ``score`` (no model files: the registry is what is tested)."""
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # registered already
        client.create_registered_model(name)
    tags = {"val_accuracy": str(score), **SET}
    return str(client.create_model_version(name, source="file:///nowhere", tags=tags).version)


def _promote(client, name: str, version: str, score: float):
    candidate = {"accuracy": score, **SET}
    return registry.promote(client, name, version, candidate, 0.0, "accuracy", "val_accuracy", "acc", "min")


def test_a_stale_read_of_the_champion_cannot_crown_the_worse_model(mlflow_uri, monkeypatch):
    """v1 (0.50) champion; v2 (0.60) and v3 (0.55) promoted at once: v3's promoter read the champion (v1) before
    v2's promoter set v2, and writes last. Before: v3 became champion (both reported promoted)."""
    client = mlflow.MlflowClient(mlflow_uri)
    name = "stale-read"
    v1 = _register(client, name, 0.50)
    assert _promote(client, name, v1, 0.50)[1]
    v2, v3 = _register(client, name, 0.60), _register(client, name, 0.55)
    stale = registry.current_champion(client, name)  # v1, as v3's promoter saw it
    assert _promote(client, name, v2, 0.60)[1]  # v2's promoter finishes first
    monkeypatch.setattr(registry, "current_champion", lambda *a, **k: stale)
    before, promoted, reason = _promote(client, name, v3, 0.55)
    assert before["version"] == v1 and not promoted and f"version {v2} scores higher" in reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2


def test_two_holders_of_a_broken_lock_converge_on_the_best(mlflow_uri, monkeypatch):
    """A holder died inside the lock; two waiters both break it (its staleness read before either re-created it)
    and promote at once, each with a stale read of the champion: the better version ends champion."""
    client = mlflow.MlflowClient(mlflow_uri)
    name = "broken-lock"
    v1 = _register(client, name, 0.50)
    assert _promote(client, name, v1, 0.50)[1]
    client.create_registered_model(name + registry.LOCK_SUFFIX, tags={"owner": "dead", "acquired_at": "0"})
    v2, v3 = _register(client, name, 0.60), _register(client, name, 0.55)
    stale = registry.current_champion(client, name)
    monkeypatch.setattr(registry, "current_champion", lambda *a, **k: stale)

    @registry.contextmanager
    def both_enter(client, name, **_):  # what a check-then-delete lock break let happen: two holders at once
        yield "holder"

    monkeypatch.setattr(registry, "promotion_lock", both_enter)
    barrier, results = threading.Barrier(2), {}

    def run(version: str, score: float) -> None:
        barrier.wait()
        results[version] = _promote(mlflow.MlflowClient(mlflow_uri), name, version, score)

    threads = [threading.Thread(target=run, args=args) for args in ((v3, 0.55), (v2, 0.60))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2
    assert results[v2][1] and not results[v3][1]  # exactly one reports promoted, the right one


def test_a_dead_holders_lock_is_broken_before_the_waiters_give_up(mlflow_uri, monkeypatch):
    client = mlflow.MlflowClient(mlflow_uri)
    acquired = time.time() - registry.LOCK_STALE_S + 1.0  # goes stale one second from now
    client.create_registered_model("dead" + registry.LOCK_SUFFIX, tags={"owner": "x", "acquired_at": str(acquired)})
    began = time.monotonic()
    with registry.promotion_lock(client, "dead", wait_s=registry.LOCK_WAIT_S) as owner:
        assert client.get_registered_model("dead" + registry.LOCK_SUFFIX).tags["owner"] == owner
    assert time.monotonic() - began < 30


@pytest.mark.parametrize("minimum", [0.0, 0.7])
def test_converge_is_a_no_op_once_settled_and_none_below_the_minimum(mlflow_uri, minimum):
    client = mlflow.MlflowClient(mlflow_uri)
    name = f"settled-{minimum}"
    for score in (0.6, 0.65, 0.62):
        _register(client, name, score)
    best = registry.converge(client, name, "val_accuracy", minimum, **SET)
    assert best == (None if minimum else "2")
    assert registry.converge(client, name, "val_accuracy", minimum, **SET) == best


def test_a_rerun_with_the_same_model_and_evaluation_reuses_its_version(mlflow_uri, tmp_path):
    """A second pipeline run whose training came from a cache hands register the same files and figures: it finds
    the version the first run registered (nothing logged again) instead of adding an identical one; new figures
    or new files are a new version."""
    weights = tmp_path / "head.pt"
    weights.write_bytes(b"weights v1")
    logged: list[str] = []

    def log_model() -> str:
        mlflow.log_text("model", "model/MLmodel")
        logged.append(mlflow.active_run().info.run_id)
        return f"runs:/{logged[-1]}/model"

    def register(score: float) -> dict:
        with mlflow.start_run():
            candidate = {"accuracy": score, **SET}
            return registry.register_and_promote(mlflow, log_model, [weights], "rerun", candidate, 0.0)

    first = register(0.5)
    again = register(0.5)  # another run, the same files and evaluation
    assert (first["version"], again["version"]) == (1, 1) and len(logged) == 1
    assert again["promoted"] and "registered before" in again["reason"]
    assert register(0.6)["version"] == 2  # the same files, another evaluation (other data): a new version
    weights.write_bytes(b"weights v2")
    assert register(0.6)["version"] == 3 and len(logged) == 3
    client = mlflow.MlflowClient()
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'rerun'")) == [1, 2, 3]


def test_a_lock_create_that_lost_a_race_in_the_server_is_retried_and_other_bad_requests_raise():
    """With authentication on PostgreSQL, two lock creates at once can end in a unique-key violation answered as
    BAD_REQUEST (the model's permission row): that is contention, tried again; any other bad request is an error."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, RESOURCE_DOES_NOT_EXIST

    race = MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value", error_code=BAD_REQUEST)

    class Client:
        def __init__(self, first: Exception):
            self.errors, self.created, self.deleted = [first], [], []

        def create_registered_model(self, name, tags, description):
            if self.errors:
                raise self.errors.pop()
            self.created.append(name)
            self.tags = tags

        def get_registered_model(self, name):
            if not self.created:  # the racing creator released it meanwhile
                raise MlflowException("released meanwhile", error_code=RESOURCE_DOES_NOT_EXIST)
            return SimpleNamespace(tags=self.tags)

        def delete_registered_model(self, name):
            self.deleted.append(name)

    client = Client(race)
    with registry.promotion_lock(client, "m", wait_s=5):
        pass
    assert client.created == ["m" + registry.LOCK_SUFFIX] == client.deleted
    with (
        pytest.raises(MlflowException, match="bad name"),
        registry.promotion_lock(Client(MlflowException("bad name", error_code=BAD_REQUEST)), "m", wait_s=5),
    ):
        pass
