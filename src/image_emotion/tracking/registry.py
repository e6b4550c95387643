"""The MLflow model registry: who is champion, and whether a new version should take its place."""

from __future__ import annotations

from typing import Any


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, min_accuracy: float) -> tuple[bool, str]:
    """Whether ``candidate`` (accuracy, dataset, label_set) should become champion, and why."""
    if candidate["accuracy"] < min_accuracy:
        return False, f"test accuracy {candidate['accuracy']:.4f} is below register.min_accuracy {min_accuracy}"
    if champion is None:
        return True, "no champion yet"
    if (champion.get("dataset"), champion.get("label_set")) != (candidate["dataset"], candidate["label_set"]):
        return False, (
            f"champion is for {champion.get('dataset')}/{champion.get('label_set')}, not comparable; "
            "promote by hand if intended"
        )
    if candidate["accuracy"] > champion["accuracy"]:
        return True, f"test accuracy {candidate['accuracy']:.4f} beats the champion's {champion['accuracy']:.4f}"
    return False, f"test accuracy {candidate['accuracy']:.4f} does not beat the champion's {champion['accuracy']:.4f}"


def current_champion(client, name: str) -> dict[str, Any] | None:
    """The champion's version, accuracy, dataset and label set, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return {
        "version": version.version,
        "accuracy": float(version.tags.get("test_accuracy", "nan")),
        "dataset": version.tags.get("dataset"),
        "label_set": version.tags.get("label_set"),
    }
