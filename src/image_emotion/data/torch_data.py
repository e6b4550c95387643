"""From a prepared dataset to tensors: images ``(3, H, W)`` in [0, 1], boxes, labels, distributions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from image_emotion.data.emotions import emotion_distribution, get_label_set
from image_emotion.data.images import DEFAULT_MAX_PIXELS, load_image
from image_emotion.data.manifest import read_manifest
from image_emotion.data.safe_paths import inside
from image_emotion.errors import DatasetError


@dataclass
class PreparedDataset:
    """A ``prepare`` output: the manifest, the image root and the dataset's name and label set."""

    manifest: pd.DataFrame
    root: Path
    name: str
    label_set: str
    max_pixels: int = DEFAULT_MAX_PIXELS  # images.max_pixels when it was prepared: later decodes keep it

    @classmethod
    def load(cls, prepared_dir: str | Path) -> PreparedDataset:
        """Read ``manifest.csv`` and ``dataset.json`` written by ``image-emotion prepare``; every manifest path
        must stay inside the image root (``safe_paths.inside``), else a one-line ``DatasetError`` names the row."""
        prepared_dir = Path(prepared_dir)
        info_path = prepared_dir / "dataset.json"
        if not info_path.is_file():
            raise DatasetError(f"{info_path}: not found; run `image-emotion prepare` (or `dvc repro prepare`) first")
        info = json.loads(info_path.read_text())
        root = Path(info["root"])  # relative roots are relative to the prepared directory
        root = root if root.is_absolute() else prepared_dir / root
        manifest_path = prepared_dir / "manifest.csv"
        manifest = read_manifest(manifest_path)
        for i, path in enumerate(manifest["path"]):  # every later ``root / path`` stays inside the root
            inside(root, path, f"{manifest_path} row {i + 2}")
        return cls(
            manifest,
            root,
            info["dataset"],
            info["label_set"],
            int(info.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )

    def image(self, path: str) -> Image.Image:
        """The RGB image at ``path`` (a manifest path), decoded under the limit it was prepared with."""
        return load_image(inside(self.root, path, f"{self.name} manifest path"), self.max_pixels)

    def tensor_image(self, path: str) -> Tensor:
        """``image(path)`` as ``(3, H, W)`` in [0, 1]."""
        return to_tensor(self.image(path))

    def subset(self, mask: np.ndarray | pd.Series) -> PreparedDataset:
        """The rows where ``mask`` is true."""
        return PreparedDataset(
            self.manifest[np.asarray(mask)].reset_index(drop=True),
            self.root,
            self.name,
            self.label_set,
            self.max_pixels,
        )

    def split(self, name: str) -> PreparedDataset:
        """The rows of one split (``train`` / ``val`` / ``test`` / ``cv``)."""
        return self.subset(self.manifest["split"] == name)

    def split_rows(self, name: str) -> np.ndarray:
        """Row indices ``(n,)`` of one split in the manifest."""
        return np.flatnonzero(self.manifest["split"].to_numpy() == name)

    def labels(self) -> Tensor:
        """Class ids ``(N,)`` in this dataset's label set."""
        labels = get_label_set(self.label_set)
        return torch.tensor([labels.index(x) for x in self.manifest["label"]], dtype=torch.long)

    def distributions(self, p_star: float, target: str = "eq4") -> Tensor:
        """The training targets of L_ed ``(N, C)`` (params ``emotions.target``):

        - ``eq4``: seed 000 eq. 4 - the label's share of the votes (``p_star`` where there are none, as in FI)
          on the label, the rest spread by ``1 / dis`` over the label set's wheel;
        - ``votes``: the vote distribution itself where there are votes, else eq. 4;
        - ``onehot``: the label alone (L_ed is then L_cls).
        """
        labels = get_label_set(self.label_set)
        rows = []
        for label, dist, p in zip(
            self.manifest["label"],
            self.manifest["distribution"],
            self.label_probabilities(p_star).tolist(),
            strict=True,
        ):
            if target == "onehot":
                rows.append(np.eye(len(labels))[labels.index(label)])
            elif target == "votes" and dist is not None:
                rows.append(np.asarray(dist, dtype=np.float64))
            else:
                rows.append(emotion_distribution(label, p if p > 0 else p_star, self.label_set))
        return torch.tensor(np.stack(rows), dtype=torch.float32)

    def label_probabilities(self, p_star: float) -> Tensor:
        """``p*`` of each image ``(N,)``: its label's share of the votes, else the params default."""
        labels = get_label_set(self.label_set)
        return torch.tensor(
            [
                p_star if d is None else float(d[labels.index(x)])
                for x, d in zip(self.manifest["label"], self.manifest["distribution"], strict=True)
            ],
            dtype=torch.float32,
        )


def preprocess(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """One RGB image as the model's input: resized to ``size × size`` and normalised, ``(3, size, size)``."""
    x = to_tensor(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def load_tensor_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Safe decode -> ``(3, H, W)`` float in [0, 1]."""
    return to_tensor(load_image(path, max_pixels))


class DetectionDataset(Dataset):
    """Images with their boxes (and, for objects, their categories) for detector training; optional
    horizontal flips drawn from a generator whose state training checkpoints save."""

    def __init__(
        self,
        paths: list[Path],
        boxes: list[list[list[float]]],
        labels: list[list[int]] | None = None,
        hflip: bool = False,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels
        self.boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        self.labels = None if labels is None else [torch.tensor(x, dtype=torch.int64) for x in labels]
        self.hflip = hflip
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def emotional_regions(cls, data: PreparedDataset, hflip: bool = False, seed: int = 0) -> DetectionDataset:
        """The images of ``data`` that have emotional-region boxes."""
        rows = data.manifest[data.manifest["boxes"].map(len) > 0]
        if rows.empty:
            raise DatasetError(
                f"{data.name}: no image has emotional-region boxes; the detector trains on a dataset with boxes "
                "(detector_data: EmotionROI or the synthetic regions set)"
            )
        paths = [inside(data.root, p, f"{data.name} manifest path") for p in rows["path"]]
        return cls(paths, list(rows["boxes"]), None, hflip, seed, data.max_pixels)

    @classmethod
    def objects(cls, root: Path, rows: list[tuple[str, list[list[float]]]], hflip: bool, seed: int):
        """Object boxes with categories: ``rows`` of ``(path, [[x1, y1, x2, y2, category], ...])``."""
        rows = [(p, objs) for p, objs in rows if objs]
        if not rows:
            raise DatasetError(f"{root}: no image has object boxes; the object pre-training needs them")
        return cls(
            [inside(root, p, f"{root} object rows") for p, _ in rows],
            [[o[:4] for o in objs] for _, objs in rows],
            [[int(o[4]) for o in objs] for _, objs in rows],
            hflip,
            seed,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, boxes = load_tensor_image(self.paths[i], self.max_pixels), self.boxes[i].clone()
        if self.hflip and torch.rand(1, generator=self.generator).item() < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        target = {"boxes": boxes}
        if self.labels is not None:
            target["labels"] = self.labels[i]
        return image, target


def collate_lists(batch):
    """Detection batches stay lists (images differ in size)."""
    return tuple(list(x) for x in zip(*batch, strict=True))
