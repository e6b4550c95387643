"""The one typed configuration of every stage: defaults, documentation and validation live here only.

``params.yaml`` is this schema written out with its defaults (``image-emotion params --write`` renders it;
a test checks that the committed file is fresh). ``load_config`` reads a params file, applies
``--set a.b=value`` overrides and validates the result: an unknown key anywhere is an error that names the
nearest valid key, a wrong type names the key and the value. Stages take the typed ``Config`` (or one of
its sections), never a raw mapping. Import-light (pydantic and yaml only), so the CLI and the kfp compiler
read it without torch.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from image_emotion.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

DATASETS = ("synthetic", "fi", "emotionroi", "iaps", "artphoto", "abstract", "emotion6", "twitter", "emoset")
DatasetName = Literal["synthetic", "fi", "emotionroi", "iaps", "artphoto", "abstract", "emotion6", "twitter", "emoset"]
HeadMode = Literal["global", "object", "emotional", "global+object", "global+emotional"]
FpnBackbone = Literal["efficientnet_lite0", "resnet50", "resnet101"]
MetricLoss = Literal["sentiment", "triplet", "centre"]
MetricFeature = Literal["sentiment", "fc", "joint"]
# The vocabularies above (and MetricBackbone) are the modules' too: they read them with typing.get_args.


_VALIDATING: ContextVar[bool] = ContextVar("validating", default=False)  # inside a pydantic validation


class Section(BaseModel):
    """A params.yaml section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **values: Any) -> None:
        """Build directly (``DetectorConfig(top_k=3)``); a bad value is a ``ConfigError`` naming the key.
        (pydantic calls this for nested sections too: only the outermost call turns errors into one line.)"""
        if _VALIDATING.get():
            super().__init__(**values)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError("; ".join(_describe(e, type(self).__name__, type(self)) for e in exc.errors())) from None
        finally:
            _VALIDATING.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping (lists for tuples), the shape it has in params.yaml."""
        return self.model_dump(mode="json")


# --- data ---------------------------------------------------------------------------------------------------


class EmotionRoiOptions(Section):
    threshold: float = Field(0.5, gt=0, le=1, description="heat-map pixels >= threshold x max form the regions")
    min_area: float = Field(0.005, ge=0, lt=1, description="drop blobs smaller than this fraction of the image")


class TwitterOptions(Section):
    agreement: Literal["five", "four", "three"] = Field("five", description="which *_agree.txt to read")


class DataConfig(Section):
    """The classifier's dataset (the paper: FI) and how strictly every role's dataset is read."""

    dataset: DatasetName = Field("synthetic", description=" | ".join(DATASETS))
    root: str = Field("data/synthetic/main", description="the dataset's directory in its published layout (README)")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="raise: stop on the first bad file | skip: leave bad files out (skipped.csv)"
    )
    check_images: bool = Field(True, description="decode every image once while preparing (catches corrupt files)")
    emotionroi: EmotionRoiOptions = EmotionRoiOptions()
    twitter: TwitterOptions = TwitterOptions()


class ImagesConfig(Section):
    max_pixels: int = Field(50_000_000, gt=0, description="refuse larger images (decompression bombs)")


class ServingConfig(Section):
    """What one request to a served model may ask (over a limit: HTTP 400 naming it); logged with the model.

    The limits are the registered model's ``model_config``, so a served model keeps those it was registered
    with."""

    max_rows: int = Field(64, ge=1, description="images in one request")
    max_image_bytes: int = Field(32 * 2**20, ge=1, description="one encoded image file (a 24 MP JPEG is ~10 MB)")
    max_request_bytes: int = Field(64 * 2**20, ge=1, description="all encoded images of one request")
    max_image_pixels: int = Field(
        ImagesConfig.model_fields["max_pixels"].default, ge=1, description="one image, as its header states"
    )
    max_request_pixels: int = Field(200_000_000, ge=1, description="all images of one request, as headers state")
    max_k: int = Field(100, ge=1, description="neighbours one retrieval query may ask")
    max_emotion_models: int = Field(8, ge=1, description="emotion models one generative request may ask")


class SyntheticSet(Section):
    num_images: int = Field(ge=16, description="at least 2 per class")
    seed: int
    label_set: Literal["mikels8", "ekman6"] = Field(
        "mikels8",
        description="ekman6: Mikels motifs labelled by Ekman's emotions (joy: amusement, contentment, "
        "excitement; surprise: awe)",
    )


class SyntheticConfig(Section):
    """The generated default datasets (no download), one set a role of the paper's data flow."""

    image_size: int = Field(160, ge=64, le=1024, description="square images of this many pixels")
    votes_per_image: int = Field(20, ge=1, description="simulated viewers per image (the vote distribution)")
    ambiguous_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="images showing two neighbouring emotions on Mikels' wheel, labelled by their noisy top vote",
    )
    sets: dict[str, SyntheticSet] = Field(
        {
            "objects": SyntheticSet(num_images=160, seed=2),
            "regions": SyntheticSet(num_images=400, seed=3),
            "main": SyntheticSet(num_images=800, seed=0),
            "small": SyntheticSet(num_images=240, seed=1),
            "ekman": SyntheticSet(num_images=400, seed=4, label_set="ekman6"),
        },
        description="drawn under data/synthetic/<name>: objects plays COCO, regions EmotionROI, main FI, small the "
        "small transfer sets, ekman a second emotion model for seed 001",
    )

    @classmethod
    def one_set(cls, num_images: int, seed: int = 0, **rest: Any) -> SyntheticConfig:
        """A config of the single set ``main`` (tests, benchmarks)."""
        return cls(sets={"main": {"num_images": num_images, "seed": seed}}, **rest)


class DatasetRef(Section):
    """A dataset in one role of the data flow, read from its published layout."""

    dataset: DatasetName = Field(description=" | ".join(DATASETS))
    root: str = Field(description="the dataset's directory (README: Datasets)")


class TransferSet(DatasetRef):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="names its outputs (data/prepared/<name>, ...)")


class SplitFractions(Section):
    train: float = Field(0.8, ge=0)
    val: float = Field(0.05, ge=0)
    test: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class PrepareConfig(Section):
    seed: int = 0
    split: SplitFractions = Field(SplitFractions(), description="random stratified split (the FI protocol)")
    folds: int = Field(5, ge=2, description="stratified folds for the small-dataset transfer")


class EmotionsConfig(Section):
    dominant_probability: float = Field(0.7, gt=0, le=1, description="p* of eq. 4 where an image has no votes")
    target: Literal["eq4", "votes", "onehot"] = Field(
        "eq4", description="L_ed's target: eq. 4 (p* = the label's vote share) | the votes | one-hot"
    )


# --- models and training ------------------------------------------------------------------------------------


class DetectorConfig(Section):
    """The emotional-region detector (seed 000 §4.1). CPU-sized defaults; the paper: resnet101, 800 px."""

    backbone: FpnBackbone = "efficientnet_lite0"
    layout: Literal["v1", "v2"] = Field(
        "v1",
        description="torchvision's heads: v1 two-FC box head, 1-conv RPN (fasterrcnn_resnet50_fpn) | v2 4-conv+FC "
        "box head, 2-conv RPN, FPN with BatchNorm (fasterrcnn_resnet50_fpn_v2)",
    )
    backbone_weights: str | None = Field(
        "imagenet", description="imagenet (Lite0, ships offline) | a local .pth path | null (random)"
    )
    object_weights: str | None = Field(
        None, description="local COCO Faster R-CNN checkpoint (torchvision names) for the frozen object classifier"
    )
    fpn_channels: int = Field(128, gt=0)
    trainable_layers: int = Field(3, ge=0, le=5)
    min_size: int = Field(160, gt=0, description="input resize (use 800/1333 for photos on a GPU)")
    max_size: int = Field(160, gt=0)
    anchor_sizes: tuple[int, int, int, int] = Field((32, 64, 128, 256), description="one anchor size per FPN level")
    rpn_pre_nms_top_n: int = Field(150, gt=0)
    rpn_post_nms_top_n: int = Field(50, gt=0)
    rpn_train_pre_nms_top_n: int = Field(1000, gt=0)
    rpn_train_post_nms_top_n: int = Field(300, gt=0)
    representation_size: int = Field(256, gt=0)
    num_object_classes: int = Field(91, gt=1)
    box_batch_size_per_image: int = Field(128, gt=0)
    region_nms: float = Field(0.5, gt=0, le=1)
    top_k: int = Field(10, ge=1, description="K emotional regions per image")


class DetectorTraining(Section):
    """SGD with warm-up and gradient clipping; a checkpoint every epoch, resumed when interrupted."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0001, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(10.0, gt=0)
    seed: int = 0
    hflip: bool = True


class FinetuneConfig(DetectorTraining):
    """The emotional branch on detector_data's boxes (L_det* = L_emo + L_reg), the object branch frozen."""

    epochs: int = Field(2, ge=1)
    max_images: int | None = Field(256, ge=1, description="train on a seeded subset of this many (null: all)")


class PretrainConfig(DetectorTraining):
    """Object pre-training (COCO's role) on the synthetic objects set, when ``detector.object_weights`` is
    null; otherwise the COCO checkpoint is loaded instead."""

    root: str = Field("data/synthetic/objects", description="a synthetic set (every object boxed with its shape)")
    epochs: int = Field(2, ge=1)


class ExtractConfig(Section):
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(256, ge=1, description="images per cache shard (each checked by SHA-256)")


class HeadTraining(Section):
    """SGD on cached features; the paper: lr 1e-3, batch 128, 100 epochs."""

    dropout: float = Field(0.5, ge=0, lt=1)
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0005, ge=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(100, ge=1)
    seed: int = 0


class ClassifierConfig(HeadTraining):
    """The multi-level classifier head on cached features (Table 1 ablations train every mode)."""

    mode: HeadMode = Field("global+emotional", description="the full method")
    lambdas: tuple[float, ...] = Field(
        tuple(round(0.1 * i, 1) for i in range(11)), description="λ of (1-λ)·L_cls + λ·L_ed, λ* chosen on validation"
    )
    hidden: int = Field(256, ge=1)

    @field_validator("mode")
    @classmethod
    def _method_reads_one_detector(cls, value: str) -> str:
        if "object" in value:  # object regions need the object-pretrained detector too: an ablation, never served
            raise ValueError(
                f"{value!r} is one of Table 1's ablations (train-classifier trains them all); the method's mode is "
                "global, emotional or global+emotional"
            )
        return value

    @field_validator("lambdas")
    @classmethod
    def _lambdas_in_unit_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0.0 <= x <= 1.0 for x in value) or len(set(value)) != len(value):
            raise ValueError(f"needs distinct values in [0, 1], got {list(value)}")
        return value


class TransferConfig(Section):
    """The small target datasets of the 5-fold one-against-all transfer (seed 000 Table 3)."""

    sets: tuple[TransferSet, ...] = Field(
        (TransferSet(name="small", dataset="synthetic", root="data/synthetic/small"),),
        description="the paper: iaps, artphoto, abstract, emotionroi",
    )
    head: HeadTraining = HeadTraining()

    @field_validator("sets")
    @classmethod
    def _names_unique(cls, value: tuple[TransferSet, ...]) -> tuple[TransferSet, ...]:
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        return value


MetricBackbone = Literal["efficientnet_lite0", "resnet18", "resnet50", "resnet101", "googlenet"]


class MetricConfig(Section):
    """Seed 002's sentiment-vector network, softmax + sentiment constraint (train_metric); CPU-sized defaults.

    The paper: GoogLeNet fine-tuned whole, lr 1e-4 conv / 1e-3 last layer, batch 128 (>= 8 a class), 100 epochs.
    """

    backbone: MetricBackbone = Field("efficientnet_lite0", description="the paper: googlenet (local weights)")
    backbone_weights: str | None = Field(
        "imagenet", description="imagenet (Lite0, ships offline) | a local .pth path | null (random)"
    )
    image_size: int = Field(128, ge=32, le=1024, description="square input (the paper: 224)")
    embedding_dim: int | None = Field(
        512, ge=1, description="FC embedding before the classifier, the triplet loss's features (the paper: 512)"
    )
    filters: int = Field(16, ge=1, description="1×1 filters a layer: 136-d Gram triangles, 680-d SV")
    freeze_backbone: bool = Field(
        True, description="train only the 1×1 convs and FC layers on backbone maps computed once (the paper: false)"
    )
    epochs: int = Field(20, ge=1, description="the paper: 100")
    batch_size: int = Field(64, ge=2, description="the paper: 128")
    min_per_class: int = Field(4, ge=1, description="images of every emotion in each batch (the paper: 8)")
    lr_conv: float = Field(
        0.1, gt=0, description="conv layers; the new 1×1 ones start from scratch on a frozen backbone (the paper: 1e-4)"
    )
    lr_last: float = Field(0.01, gt=0, description="the FC layers (the paper: 1e-3)")
    momentum: float = Field(0.9, ge=0)
    omega: float = Field(0.7, ge=0, le=1, description="ω of E = (1-ω)·E_cls + ω·E_sml")
    loss: MetricLoss = Field("sentiment", description="E_sml: the sentiment constraint | plain triplet | centre loss")
    feature: MetricFeature = Field(
        "sentiment", description="E_sml and retrieval on the sentiment vector (SV) | the unit-norm FC embedding | both"
    )
    sampling: Literal["random", "hard", "semi-hard"] = "semi-hard"
    alpha: float = Field(0.2, ge=0, description="triplet margin")
    alpha1: float = Field(0.2, ge=0, description="sentiment constraint margin: same polarity vs positive")
    alpha2: float = Field(0.1, ge=0, description="sentiment constraint margin: opposite polarity vs same")
    seed: int = 0
    ablation_seeds: tuple[int, ...] = Field(
        (0,), description="Table 1's rows trained with each seed (mean ± std); [] skips the ablation"
    )


class RetrieveConfig(Section):
    """The retrieval index over the main set and its measures (seed 002 protocol)."""

    index: Literal["auto", "exact", "hnsw"] = Field("auto", description="auto: exact below exact_below items")
    exact_below: int = Field(50_000, ge=1, description="collections this large get a faiss HNSW index")
    k: int = Field(5, ge=1, description="neighbours shown a query")
    ef_search: int = Field(
        256, ge=1, description="HNSW's search width, fixed with the index (a query's k never changes it)"
    )
    grid_queries: int = Field(4, ge=0, description="test queries drawn with their top-k (queries.png)")


class GenerativeConfig(Section):
    """Seed 001's generative model (UGRIE): image encoder -> mapping -> BART filling each emotion model's template.

    One model is trained on the main set (its label set and, with ``binary_view``, its polarity) mixed with
    ``sets`` (other emotion models, e.g. EmotionROI's Ekman-6, Emotion6); the encoder is frozen and its features
    computed once. CPU-sized defaults; the paper: CLIP + BART from their pretrained weights.
    """

    encoder: Literal["efficientnet_lite0", "clip"] = Field(
        "efficientnet_lite0", description="clip: CLIP's vision tower (the paper) | Lite0 standing in for it"
    )
    encoder_weights: str | None = Field(
        "imagenet",
        description="Lite0: imagenet | a .pth path | null; clip: a local from_pretrained directory | "
        "null (a small random CLIP, tests only)",
    )
    decoder_weights: str | None = Field(
        None,
        description="a local BART directory with its tokenizer (the paper: bart-base) | null: a small BART "
        "trained from scratch over the template words",
    )
    image_size: int = Field(160, ge=32, le=1024, description="Lite0's input size (CLIP uses its own)")
    prefix_length: int = Field(4, ge=1, description="image prefix vectors the mapping makes")
    mapping_hidden: int = Field(512, ge=1)
    d_model: int = Field(128, ge=8, description="the small BART (decoder_weights null): width")
    layers: int = Field(2, ge=1, description="the small BART: encoder and decoder layers each")
    heads: int = Field(4, ge=1, description="the small BART: attention heads (divides d_model)")
    dropout: float = Field(0.0, ge=0, lt=1, description="the small BART's dropout")
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.0005, gt=0, description="AdamW (about 5e-5 with a pretrained BART)")
    weight_decay: float = Field(0.01, ge=0)
    distribution_weight: float = Field(
        0.5, ge=0, le=1, description="λ of (1-λ)·template NLL + λ·CE(emotion distribution, label softmax) (eq. 4)"
    )
    binary_view: bool = Field(True, description="every set also trains and is evaluated as positive/negative")
    sets: tuple[TransferSet, ...] = Field(
        (TransferSet(name="ekman", dataset="synthetic", root="data/synthetic/ekman"),),
        description="more emotion models mixed into the one model (the paper: emotionroi, emotion6, ...)",
    )
    num_beams: int = Field(2, ge=1, description="beam search of the constrained generation")
    low_resource_shots: tuple[int, ...] = Field(
        (1, 5, 10), description="k training images a class for the low-resource curve ([] skips it)"
    )
    low_resource_seeds: tuple[int, ...] = Field((0,), description="draws of the k-shot sets (mean ± std)")
    low_resource_steps: int = Field(200, ge=1, description="optimiser steps of each k-shot model")
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GenerativeConfig:
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names) or "main" in names:
            raise ValueError(f"set names must be unique and not 'main', got {names}")
        return self


class EvaluateConfig(Section):
    num_overlays: int = Field(8, ge=0, description="test images drawn with their emotional regions")


class RegisterConfig(Section):
    model_name: str = "image-emotion"
    min_accuracy: float = Field(
        0.0, ge=0, le=1, description="never promote below this validation accuracy (the kfp condition too)"
    )
    retrieval_model_name: str = Field("image-emotion-retrieval", description="seed 002's model (register_metric)")
    min_map8: float = Field(0.0, ge=0, le=1, description="never promote a retrieval model below this validation mAP8")
    generative_model_name: str = Field("image-emotion-generative", description="seed 001's model")
    min_generative_accuracy: float = Field(
        0.0,
        ge=0,
        le=1,
        description="never promote a generative model below this validation accuracy (main emotion model)",
    )


class MlflowConfig(Section):
    experiment: str = "image-emotion"
    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    artifact_location: str | None = Field(
        None, description="e.g. s3://bucket/mlflow (with $MLFLOW_S3_ENDPOINT_URL for a non-AWS endpoint)"
    )


with warnings.catch_warnings():  # the section `register` shadows ABCMeta.register, which no config uses
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Config(Section):
        """Every setting of every stage (params.yaml)."""

        synthetic: SyntheticConfig = SyntheticConfig()
        detector_data: DatasetRef = Field(
            DatasetRef(dataset="synthetic", root="data/synthetic/regions"),
            description="the detector's emotional-region boxes (the paper: emotionroi)",
        )
        data: DataConfig = DataConfig()
        images: ImagesConfig = ImagesConfig()
        prepare: PrepareConfig = PrepareConfig()
        emotions: EmotionsConfig = EmotionsConfig()
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
        detector: DetectorConfig = DetectorConfig()
        pretrain: PretrainConfig = PretrainConfig()
        finetune: FinetuneConfig = FinetuneConfig()
        extract: ExtractConfig = ExtractConfig()
        classifier: ClassifierConfig = ClassifierConfig()
        transfer: TransferConfig = TransferConfig()
        evaluate: EvaluateConfig = EvaluateConfig()
        metric: MetricConfig = MetricConfig()
        retrieve: RetrieveConfig = RetrieveConfig()
        generative: GenerativeConfig = GenerativeConfig()
        register: RegisterConfig = RegisterConfig()
        serving: ServingConfig = ServingConfig()
        mlflow: MlflowConfig = MlflowConfig()

        def with_overrides(self, overrides: Sequence[str]) -> Config:
            """A new validated config with each ``a.b=value`` applied (the value read as YAML: user input)."""
            return validate(apply_overrides(self.to_dict(), overrides), overrides=overrides)

        def with_values(self, values: Mapping[str, Any]) -> Config:
            """A new validated config with each dotted key set to its value as given (nothing parsed: a path
            holding ``#`` or ``: `` stays itself)."""
            return validate(set_values(self.to_dict(), values))


# --- loading ------------------------------------------------------------------------------------------------


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The section class that holds the key at ``loc[-1]`` (``None`` when the path leaves the schema); list
    indices and mapping keys of ``tuple[Section, ...]`` / ``dict[str, Section]`` fields are stepped over."""
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        annotation = field.annotation if field else None
        if get_origin(annotation) in (tuple, dict):
            annotation = [a for a in get_args(annotation) if a is not Ellipsis][-1]
            if parts:
                parts.pop(0)  # the index or key
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _source_of(key: str, source: str, overrides: Sequence[str]) -> str:
    """Who set ``key``: the last ``--set`` override at, above or below it (``--set a.b=1``), else ``source``."""
    for item in reversed(overrides):
        name = item.partition("=")[0]
        if key == name or key.startswith(f"{name}.") or name.startswith(f"{key}."):
            return f"--set {item}"
    return source


def _describe(
    error: dict[str, Any], source: str, root: type[BaseModel] | None = None, overrides: Sequence[str] = ()
) -> str:
    """One line for one pydantic error: who set the key (a ``--set`` override or ``source``), the key, what is
    wrong, the nearest valid key for an unknown one."""
    loc = error["loc"]
    key = ".".join(str(p) for p in loc)
    source = _source_of(key, source, overrides)
    if error["type"] == "extra_forbidden":
        holder = _model_at(root or Config, loc)
        known = list(holder.model_fields) if holder else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        hint = f"did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?" if near else f"known: {', '.join(known)}"
        return f"{source}: unknown key {key!r} ({hint})"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f", got {value!r}"
    return f"{source}: {key or '<top level>'}: {error['msg']}{shown}"


def validate(raw: dict[str, Any], source: str = "params", overrides: Sequence[str] = ()) -> Config:
    """``raw`` as a ``Config``; every problem in one ``ConfigError`` (one line each, naming the ``--set``
    override that set the key, else ``source``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    token = _VALIDATING.set(True)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e, source, overrides=overrides) for e in exc.errors())) from None
    finally:
        _VALIDATING.reset(token)


def load_config(path: str | Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Config:
    """Read ``path``, apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return validate(apply_overrides(raw, overrides), str(path), overrides)


PROFILES_DIR = Path(__file__).parent / "profiles"


def profiles() -> list[str]:
    """The names of the shipped profiles (``profiles/<name>.yaml``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_config(name: str) -> Config:
    """The schema's defaults with profile ``name``'s dotted keys set, validated like any params file (an unknown
    key or a bad value is an error naming the profile's file)."""
    path = PROFILES_DIR / f"{name}.yaml"
    if name not in profiles():
        raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(profiles())}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return validate(set_values(Config().to_dict(), values), str(path))


def set_values(raw: dict[str, Any], values: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted key set to its value, in order (intermediate mappings created)."""
    out = copy.deepcopy(raw)
    for key, value in values.items() if isinstance(values, Mapping) else values:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p!r} is not a mapping in params")
        node[leaf] = value
    return out


def value_at(raw: Mapping[str, Any], key: str) -> Any:
    """The value at the dotted ``key`` of ``raw``; in a list of named items a part is an item's ``name``
    (``transfer.sets.small.root``). One line naming the key when there is none."""
    node: Any = raw
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and any(isinstance(i, Mapping) and i.get("name") == part for i in node):
            node = next(i for i in node if isinstance(i, Mapping) and i.get("name") == part)
        else:
            raise ConfigError(f"no setting {key!r} in the params (at {part!r})")
    return node


def copied_values(raw: Mapping[str, Any], pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=FROM`` pairs as ``{KEY: the value at FROM}`` (``value_at``): a value copied inside the params, never
    written in a command line (where a path holding a quote or ``;`` would break the shell)."""
    out = {}
    for item in pairs:
        key, sep, source = item.partition("=")
        if not sep or not key or not source:
            raise ConfigError(f"--set-from {item!r} must look like key.sub=other.key")
        out[key] = value_at(raw, source)
    return out


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=value`` set, the value read as YAML (intermediate mappings created)."""
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        pairs.append((key, yaml.safe_load(value) if value else ""))
    return set_values(raw, pairs)


# --- params.yaml, rendered from the schema ------------------------------------------------------------------

PARAMS_HEADER = """\
# Every setting of every stage, as the schema in src/image_emotion/config.py defines it (defaults, types,
# documentation live there; `image-emotion params --write` renders this file). `dvc repro` reads it;
# `image-emotion <stage> --set key=value` overrides it for one run; `dvc exp run -S key=value` records an
# experiment. Unknown keys are errors.
"""


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _render(model: BaseModel, indent: int) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        note = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            doc = type(value).__doc__
            comment = field.description or (
                "" if doc is None or doc == Section.__doc__ else doc.strip().splitlines()[0]
            )
            lines.append(f"{pad}{name}:" + (f"  # {comment}" if comment else ""))
            lines.extend(_render(value, indent + 1))
        elif isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
            lines.append(f"{pad}{name}:{note}")
            lines.extend(f"{pad}  - {_scalar(item.to_dict())}" for item in value)
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
            lines.append(f"{pad}{name}:{note}")
            lines.extend(f"{pad}  {key}: {_scalar(item.to_dict())}" for key, item in value.items())
        else:
            shown = list(value) if isinstance(value, tuple) else value
            lines.append(f"{pad}{name}: {_scalar(shown)}{note}")
        if indent == 0:
            lines.append("")
    return lines


def render_params(config: Config | None = None) -> str:
    """params.yaml text for ``config`` (the defaults when ``None``), with each field's description."""
    body = "\n".join(_render(config or Config(), 0)).rstrip() + "\n"
    return PARAMS_HEADER + "\n" + body
