"""Pipeline configuration and the named profiles `test`, `quick` and `full`."""

import dataclasses
import os
from pathlib import Path

# The ISBI 2012 membrane data shipped in the repository (the container image sets the variable).
BUNDLED_DATA = Path(os.environ.get(
    "UNET_TFX_BUNDLED_DATA", Path(__file__).resolve().parent.parent / "data" / "membrane"))

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


# Orchestrators `unet-tfx compile` and `submit` write for.
TARGETS = ("kubeflow", "vertex")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What the Trainer's run_fn needs; travels to it as the component's custom_config."""

    base_filters: int = 32
    depth: int = 4
    patch_size: int = 256
    batch_size: int = 2
    train_steps: int = 700
    steps_per_epoch: int = 50
    eval_batch_size: int = 2
    loss: str = "dice2"
    learning_rate: float = 1e-3
    # Exported weights are an exponential moving average of the trained ones (None: the last).
    ema_momentum: float | None = 0.99
    augment: bool = True
    seed: int = 42
    # Compute dtype policy: "auto" picks mixed_float16 on NVIDIA GPUs of compute capability >= 7.0,
    # mixed_bfloat16 on CPUs with native bfloat16 (avx512_bf16 / amx_bf16), else float32.
    # Variables and the output probabilities stay float32 under every policy.
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainingConfig.precision must be one of {', '.join(PRECISIONS)}; "
                             f"got {self.precision!r}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that shapes one pipeline: data, sizes, training, gate and destinations."""

    name: str = "unet-membrane"
    model_name: str = "unet_membrane"
    examples_dir: str = "out/examples"
    pipeline_root: str = "out/tfx"
    serving_dir: str = "out/serving"
    # "folders": ingestion wrote train/ and eval/ (deterministic); "hash": split <examples_dir>/*
    # by hash buckets `hash_buckets` (train:eval).
    split: str = "folders"
    hash_buckets: tuple = (4, 1)
    image_height: int = 512
    image_width: int = 512
    channels: int = 1
    training: TrainingConfig = TrainingConfig()
    # Gate: membrane-class Dice must exceed `min_membrane_dice` and may fall at most
    # `max_dice_drop` below the last blessed model's.
    min_membrane_dice: float = 0.70
    max_dice_drop: float = 0.01
    beam_args: tuple = ()
    # Container resources on Kubeflow / Vertex (0 or "": the cluster's default). Memory in GiB.
    # `trainer_gpu_type` uses Vertex's names (e.g. NVIDIA_L4); Kubeflow asks for nvidia.com/gpu.
    trainer_cpus: float = 0
    trainer_memory_gb: float = 0
    trainer_gpus: int = 0
    trainer_gpu_type: str = "NVIDIA_L4"
    beam_cpus: float = 0
    beam_memory_gb: float = 0

    def replace(self, **changes) -> "PipelineConfig":
        """A copy with `changes`; keys of TrainingConfig go to `training`."""
        train_keys = {f.name for f in dataclasses.fields(TrainingConfig)}
        training = {k: changes.pop(k) for k in list(changes) if k in train_keys}
        return dataclasses.replace(
            self, training=dataclasses.replace(self.training, **training), **changes
        )


PROFILES = {
    # A tiny model for a few steps: the whole graph in a few minutes on 2 cores.
    "test": PipelineConfig().replace(
        base_filters=4, patch_size=64, batch_size=2, train_steps=6, steps_per_epoch=3,
        augment=False, ema_momentum=None, min_membrane_dice=0.0,
    ),
    # The seed model on CPU, sized for under 20 minutes on 2 cores. Batch 2 makes twice the
    # optimizer steps of batch 4 in the same time, and learns the membrane faster here.
    "quick": PipelineConfig(),
    # The seed model on GPU workers.
    "full": PipelineConfig().replace(
        batch_size=16, train_steps=5000, steps_per_epoch=250, eval_batch_size=6,
        min_membrane_dice=0.80, trainer_cpus=8, trainer_memory_gb=32, trainer_gpus=1,
        beam_cpus=4, beam_memory_gb=16,
    ),
}


def resolve_uri(path: str) -> str:
    """A remote URI (gs://, s3://, ...) unchanged; a local path made absolute."""
    return path if "://" in path else os.path.abspath(path)


def load_profile(name: str, **overrides) -> PipelineConfig:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name].replace(**{k: v for k, v in overrides.items() if v is not None})
