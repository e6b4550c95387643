"""The smallest configuration of the whole pipeline that still trains every model (seconds a stage on a CPU): the
test suite runs its stages with it, and the container check (``kubeflow/container_check.py``) runs the whole kfp
pipeline in the built images with it. ``key=value`` overrides of params.yaml, as ``--set`` takes them."""

SMOKE_OVERRIDES = [
    "synthetic.sets={objects: {num_images: 16, seed: 2}, regions: {num_images: 32, seed: 3}, "
    "main: {num_images: 48, seed: 0}, small: {num_images: 40, seed: 1}, "
    "ekman: {num_images: 36, seed: 4, label_set: ekman6}}",
    "synthetic.image_size=96",
    "pretrain.epochs=1",
    "detector.min_size=96",
    "detector.max_size=96",
    "detector.fpn_channels=32",
    "detector.representation_size=64",
    "detector.top_k=4",
    "finetune.epochs=2",
    "finetune.max_images=16",
    "finetune.warmup_steps=2",
    "extract.shard_size=16",
    "prepare.split={train: 0.6, val: 0.2, test: 0.2}",  # a validation image of every class (λ* is chosen there)
    "classifier.lambdas=[0.0, 0.5, 1.0]",
    "classifier.epochs=10",
    "classifier.hidden=32",
    "transfer.head.epochs=5",
    "evaluate.num_overlays=4",
    "metric.image_size=48",
    "metric.embedding_dim=16",
    "metric.epochs=2",
    "metric.batch_size=16",
    "metric.min_per_class=1",
    "retrieve.k=3",
    "retrieve.grid_queries=2",
    "generative.image_size=48",
    "generative.d_model=16",
    "generative.layers=1",
    "generative.heads=2",
    "generative.mapping_hidden=32",
    "generative.prefix_length=2",
    "generative.epochs=3",
    "generative.batch_size=16",
    "generative.low_resource_shots=[1, 2]",
    "generative.low_resource_steps=4",
    "device=cpu",
]
