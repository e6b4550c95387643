"""What a logged MLflow model carries besides its weights: the package as code, and pinned requirements."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/image_emotion, logged as the model's code
REQUIREMENTS = ("torch", "torchvision", "mlflow", "pandas", "pillow", "numpy", "scipy")


def model_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of what the served model imports, as installed here."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in (*REQUIREMENTS, *extra)]
