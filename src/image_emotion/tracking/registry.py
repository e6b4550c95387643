"""The MLflow model registry: who is champion, and whether a new version should take its place.

A model's score is one measure (``key``: the seed-000 model's test accuracy, the retrieval model's test mAP8),
stored as a tag of each registered version (``tag``) with the dataset and label set it was measured on.
"""

from __future__ import annotations

from typing import Any


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
        "version": version.version,
        key: float(version.tags.get(tag, "nan")),
        "dataset": version.tags.get("dataset"),
        "label_set": version.tags.get("label_set"),
    }


def register_and_promote(
    mlflow,
    model_uri: str,
    name: str,
    candidate: dict[str, Any],
    minimum: float,
    key: str = "accuracy",
    tag: str = "test_accuracy",
    measure: str = "test accuracy",
    setting: str = "register.min_accuracy",
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name`` (tagged with its score, dataset and label set), alias
    it ``challenger``, and ``champion`` when ``decide`` says so; the decision is tagged on the active run and
    its score logged. Returns the decision record (written to the stage's metrics file)."""
    client = mlflow.MlflowClient()
    version = mlflow.register_model(
        model_uri,
        name,
        tags={tag: str(candidate[key]), "dataset": candidate["dataset"], "label_set": candidate["label_set"]},
    )
    champion = current_champion(client, name, key, tag)
    promote, reason = decide(candidate, champion, minimum, key, measure, setting)
    client.set_registered_model_alias(name, "challenger", version.version)
    if promote:
        client.set_registered_model_alias(name, "champion", version.version)
    result = {
        "model_name": name,
        "version": int(version.version),
        f"candidate_{key}": candidate[key],
        f"champion_{key}_before": champion[key] if champion else None,
        "champion_version_before": int(champion["version"]) if champion else None,
        "promoted": promote,
        "reason": reason,
        "model_uri": f"models:/{name}/{version.version}",
    }
    mlflow.set_tags({"promoted": promote, "reason": reason[:500], "model_version": version.version})
    scores = {f"candidate_{key}": candidate[key], f"champion_{key}_before": result[f"champion_{key}_before"]}
    mlflow.log_metrics({k: float(v) for k, v in scores.items() if v is not None})
    return result
