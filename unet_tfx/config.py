"""Pipeline configuration and the named profiles `test`, `quick` and `full`."""

import dataclasses
import os
from pathlib import Path

# The ISBI 2012 membrane data shipped in the repository (the container image sets the variable).
BUNDLED_DATA = Path(os.environ.get(
    "UNET_TFX_BUNDLED_DATA", Path(__file__).resolve().parent.parent / "data" / "membrane"))

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_COMPILE_MODES = ("auto", "on", "off")
LEARNING_RATE_SCHEDULES = ("cosine", "constant")
# The two-class losses (unet_tfx/trainer/losses.py); K classes train on the mean Dice over classes.
LOSS_NAMES = ("dice", "dice2", "dice2_bce")


# Orchestrators `unet-tfx compile` and `submit` write for.
TARGETS = ("kubeflow", "vertex")


class ConfigError(ValueError):
    """A setting out of its range (a flag's or a config file's); the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What the Trainer's run_fn needs; travels to it as the component's custom_config."""

    base_filters: int = 32
    depth: int = 4
    # 8 x 128² patches a step: the pixels of 2 x 256² from four times as many places. 5-fold CV of
    # the quick profile, 2 x 256² -> 8 x 128²: mean Dice 0.878 -> 0.882, Rand 0.840 -> 0.854,
    # membrane Dice 0.8122 -> 0.8170 (better on 4 of 5 folds), std halved; same speed per pixel.
    patch_size: int = 128
    # Per replica: each step trains on batch_size x strategy.num_replicas_in_sync patches (all
    # GPUs of all workers; 1 replica on CPU).
    batch_size: int = 8
    # quick: 1,500 steps, make run in 10 min 13 s on a 2-core EPYC with native bfloat16 (6.1
    # 256²-images/s), 17-18 min on one 1.9x slower (membrane Dice 0.8195, Rand 0.873); ~25 min
    # in float32.
    train_steps: int = 1500
    # Each epoch ends with a pass over the eval images (the curves' validation points): on 2 cores
    # that pass costs ~2.5 s, so 10 epochs of 150 rather than 30 of 50.
    steps_per_epoch: int = 150
    eval_batch_size: int = 2  # per replica too
    # "dice2_bce": the mean of the cell and membrane Dice losses plus the pixels' binary
    # cross-entropy. 5-fold CV of the quick profile, "dice2" -> "dice2_bce": Rand 0.828 -> 0.840
    # (better on 5 of 5 folds), membrane Dice 0.8122 both. "dice": the seed's cell-only loss.
    loss: str = "dice2_bce"
    learning_rate: float = 1e-3
    # "cosine": the rate falls from learning_rate to 0 along a half cosine over the training
    # steps; "constant": the seed's. 5-fold CV of the quick profile, constant -> cosine: Rand
    # 0.790 -> 0.802 (better on 4 of 5 folds), membrane Dice 0.8065 -> 0.8081.
    learning_rate_schedule: str = "cosine"
    # Batch normalization after every 3x3 conv; False: the classic U-Net. 5-fold CV of the quick
    # profile, classic -> batch norm: Rand 0.802 -> 0.828, membrane Dice 0.8081 -> 0.8122 (better
    # on 4 of 5 folds in every metric); training ~8% slower.
    batch_norm: bool = True
    # Exported weights are an exponential moving average of the trained ones (None: the last).
    ema_momentum: float | None = 0.99
    augment: bool = True  # random crops' flips and quarter turns, and the ones below
    # Beyond flips and turns (unet_tfx/trainer/augment.py), each 0 = off: rotation within
    # ±rotate_degrees, scaling within 1 ± scale, elastic deformation (displacements of std
    # elastic_sigma pixels on a 3x3 grid, as in the U-Net paper), brightness (± standard
    # deviations of the z-scored image), contrast (factor 1 ± contrast) and gamma (exponent
    # within exp(±gamma)).
    rotate_degrees: float = 0.0
    scale: float = 0.0
    elastic_sigma: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    # p(cell) above which a pixel is cell: in the served masks, the Evaluator's two-class metrics
    # and the report. Lower thins the predicted membranes (choose it by `unet-tfx cv`, which
    # scores each fold's model at several thresholds).
    mask_threshold: float = 0.5
    # Two classes: p(cell) above which a pixel seeds a cell of the watershed cells
    # (`unet_tfx.regions.cell_regions`), which the Evaluator's watershed_rand_score and the report
    # score (5-fold CV of the quick profile: Rand 0.948 / 0.954 / 0.940 at 0.95 / 0.97 / 0.99).
    cell_seed_threshold: float = 0.97
    seed: int = 42
    # Compute dtype policy: "auto" picks mixed_float16 on NVIDIA GPUs of compute capability >= 7.0,
    # mixed_bfloat16 on CPUs with native bfloat16 (avx512_bf16 / amx_bf16), else float32.
    # Variables and the output probabilities stay float32 under every policy.
    precision: str = "auto"
    # XLA compilation of the train/eval steps: "auto" is on when there is a GPU, off on CPUs
    # (XLA's CPU backend bypasses oneDNN: 0.57x float32 training speed measured on 2 cores).
    jit_compile: str = "auto"
    # BackupAndRestore saves the training state every N steps (0: at the end of each epoch only),
    # so a killed Trainer resumes at most N steps back. The seed model's state is about 4x its
    # 31 MB of weights (weights, Adam's two moments, the EMA) per save: every 25 steps cost 9%
    # of the quick profile's training speed (bench/bench_trainer.py); every 100 is ~1 minute of
    # its training on 2 cores, every 300 (the default) ~20 s, and a killed run loses at most ~3
    # minutes.
    backup_every_steps: int = 300
    # Each Trainer input (training, eval) is cached in memory when its parsed examples fit this
    # many MiB (512² float32 image + mask: 2 MiB each, so ~1,000 examples), else streamed from
    # Transform's shards with a bounded shuffle buffer (unet_tfx/trainer/dataset.py).
    cache_budget_mb: float = 2048

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainingConfig.precision must be one of {', '.join(PRECISIONS)}; "
                             f"got {self.precision!r}")
        if self.jit_compile not in JIT_COMPILE_MODES:
            raise ConfigError(f"TrainingConfig.jit_compile must be one of "
                             f"{', '.join(JIT_COMPILE_MODES)}; got {self.jit_compile!r}")
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"TrainingConfig.loss must be one of {', '.join(LOSS_NAMES)}; "
                             f"got {self.loss!r}")
        for name in ("batch_size", "train_steps", "steps_per_epoch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"TrainingConfig.{name} must be an integer >= 1; got {value!r}")
        multiple = 2**self.depth
        if (isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int)
                or self.patch_size < multiple or self.patch_size % multiple):
            raise ConfigError(f"TrainingConfig.patch_size must be a positive multiple of "
                             f"2**depth = {multiple}; got {self.patch_size!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"TrainingConfig.learning_rate must be > 0; got "
                             f"{self.learning_rate!r}")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ConfigError(f"TrainingConfig.learning_rate_schedule must be one of "
                             f"{', '.join(LEARNING_RATE_SCHEDULES)}; "
                             f"got {self.learning_rate_schedule!r}")
        for name in ("mask_threshold", "cell_seed_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"TrainingConfig.{name} must be between 0 and 1 (exclusive); "
                                 f"got {getattr(self, name)!r}")
        if isinstance(self.backup_every_steps, bool) or not isinstance(
                self.backup_every_steps, int) or self.backup_every_steps < 0:
            raise ConfigError("TrainingConfig.backup_every_steps must be an integer >= 0 (0: per "
                             f"epoch); got {self.backup_every_steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                0 <= self.seed < 2**32):  # NumPy's seed range, which Keras seeds too
            raise ConfigError(f"TrainingConfig.seed must be an integer in [0, 2**32); "
                             f"got {self.seed!r}")


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """What one `serving_default` request may hold; larger requests are refused before decoding.

    The exported signatures check these in the graph (INVALID_ARGUMENT); `unet-tfx predict`
    checks the same ones before sending (`unet_tfx.imaging`). The whole-image U-Net takes about
    520 bytes per pixel on CPU (seed model; measured: 1024² +0.58 GB, 2048² +2.1 GB, 3072²
    +4.6 GB over the loaded model's 0.63 GB), so images with a side above `tile_size` are
    segmented in tiles: their peak grows by the model on `tile_batch` tiles plus ~30 bytes per
    pixel (measured, seed model: 4096² +0.85 GB over 0.75 GB loaded, 1.6 GB in all).

    - max_pixels: per image and per request (summed over the batch): 4096². The largest
      untiled request is max_batch images of tile_size², 16 x 512² (2.7 GB peak, the old 2048²
      budget); a tiled one at max_pixels takes 1.6 GB. What grows is time: a 4096² image is
      121 tiles, ~110x a 512² request (measured on 2 shared, busy cores: 461 s against 4.2 s).
    - max_side: 4096, so a long strip (4096x1024) passes but a 65536x1 header does not.
    - max_batch: 16 images of the training resolution, 512².
    - max_request_bytes: encoded bytes of all images, 40 MiB: a 4096² greyscale PNG holds at
      most 2 bytes per pixel (16-bit, incompressible) = 32 MiB, plus zlib/chunk overhead (a
      4096² mosaic of the membrane images is 13 MB).
    """

    max_pixels: int = 4096 * 4096
    max_side: int = 4096
    max_batch: int = 16
    max_request_bytes: int = 40 * 1024 * 1024
    # Tiling (unet_tfx/trainer/tiling.py): images with a side above tile_size (after padding to
    # a multiple of 2**depth) are segmented in tile_size² tiles overlapping by tile_overlap,
    # Gaussian-blended, tile_batch tiles per model call. Both multiples of 2**depth. Against
    # whole-image inference at 2048² (seed model): overlap 128, max |dp| 0.008 and 8 of 4.2M
    # mask pixels differ; overlap 64 (81 tiles at 4096² instead of 121), 0.11 and 116.
    tile_size: int = 512
    tile_overlap: int = 128
    tile_batch: int = 4

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServingLimits.{field.name} must be a positive integer; "
                                 f"got {value!r}")
        if self.tile_overlap >= self.tile_size:
            raise ConfigError(f"ServingLimits.tile_overlap ({self.tile_overlap}) must be below "
                             f"tile_size ({self.tile_size})")


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
    # K >= 3 classes: the mask level of each class, in order (ingestion stores class indices);
    # empty: two classes, 0 = membrane/background, any other level = cell/foreground.
    mask_values: tuple = ()
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
    # `compile --target vertex --trainer vertex-training`: the custom job's worker pools (the
    # chief, plus `vertex_workers` more replicas of the same machine).
    vertex_machine_type: str = "g2-standard-8"
    vertex_workers: int = 0
    # Retraining: the train split reads the newest `span_window` spans of `examples_dir`; the
    # eval split (Transform, Trainer validation, Evaluator) always reads the trusted eval set,
    # `eval_examples` (a folder of TFRecords) or by default the oldest span's eval split.
    span_window: int = 1
    eval_examples: str = ""
    # Train only on spans the served model was not trained on (unless `force`), starting from
    # its weights when `warm_start`; keep the newest `keep_versions` pushed versions.
    warm_start: bool = True
    force: bool = False
    keep_versions: int = 3
    serving_limits: ServingLimits = ServingLimits()

    @property
    def num_classes(self) -> int:
        return max(2, len(self.mask_values))

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
        backup_every_steps=3, augment=False, ema_momentum=None, min_membrane_dice=0.0,
    ),
    # The seed model on CPU, sized for under 15 minutes on 2 cores.
    "quick": PipelineConfig(),
    # The seed model on GPU workers.
    "full": PipelineConfig().replace(
        patch_size=256, batch_size=16, train_steps=5000, steps_per_epoch=250, eval_batch_size=6,
        backup_every_steps=250,  # ~125 MB to gs:// per backup: once per epoch of fast GPU steps
        min_membrane_dice=0.80, trainer_cpus=8, trainer_memory_gb=32, trainer_gpus=1,
        beam_cpus=4, beam_memory_gb=16,
    ),
}


def resolve_uri(path: str) -> str:
    """A remote URI (gs://, s3://, ...) unchanged; a local path made absolute."""
    return path if "://" in path else os.path.abspath(path)


def load_profile(profile: str, **overrides) -> PipelineConfig:
    """The named profile with `overrides` (PipelineConfig or TrainingConfig fields; None: kept)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[profile].replace(**{k: v for k, v in overrides.items() if v is not None})
