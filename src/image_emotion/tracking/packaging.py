"""What a logged MLflow model carries besides its weights: the package as code, and pinned requirements."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/image_emotion, logged as the model's code
REQUIREMENTS = ("torch", "torchvision", "mlflow", "pandas", "pillow", "numpy", "scipy")


def public_version(version: str) -> str:
    """A version without its local label (``2.14.1+cpu`` -> ``2.14.1``): a pin the package registry can serve,
    which pip still satisfies with the local build (PEP 440: ``==2.14.1`` matches ``2.14.1+cpu``)."""
    return version.split("+", 1)[0]


def model_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of what the served model imports, as installed here, installable from the registry."""
    from importlib.metadata import version

    return [f"{pkg}=={public_version(version(pkg))}" for pkg in (*REQUIREMENTS, *extra)]
