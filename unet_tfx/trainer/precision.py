"""Mixed precision: which compute dtype this machine runs fast, and the global Keras policy.

- `mixed_float16` on NVIDIA GPUs of compute capability >= 7.0 (tensor cores); the optimizer is
  then wrapped in a LossScaleOptimizer (see `model.compile_unet`).
- `mixed_bfloat16` on CPUs with native bfloat16 instructions (AVX512_BF16, AMX-BF16: Intel
  Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later). Elsewhere bfloat16 is emulated
  and far slower than float32 (seed U-Net on a 2-core AMD EPYC without it: training 25x slower,
  inference 2x), so `auto` never picks it there.
- `float32` otherwise.

Under both mixed policies the variables stay float32 and the model's `probabilities` output
layer computes in float32, so the SavedModel's signatures return float32.
"""

import contextlib

import tensorflow as tf
import tf_keras as keras

from unet_tfx.config import PRECISIONS

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)


def native_bf16_flags(cpuinfo_path: str = "/proc/cpuinfo") -> list[str]:
    """The native-bfloat16 CPU flags in `cpuinfo_path` (empty if none or no such file)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags include avx512_bf16 or amx_bf16."""
    return bool(native_bf16_flags(cpuinfo_path))


def _gpu_capabilities() -> list[tuple[str, tuple | None]]:
    """(device name, compute capability or None) of each visible GPU."""
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append((details.get("device_name", gpu.name),
                     tuple(capability) if capability else None))
    return gpus


def gpu_supports_float16() -> bool:
    """True when there are GPUs and all are NVIDIA ones of compute capability >= 7.0."""
    gpus = _gpu_capabilities()
    return bool(gpus) and all(
        cap is not None and cap >= MIN_FLOAT16_COMPUTE_CAPABILITY for _, cap in gpus)


def resolve_precision(requested: str = "auto",
                      cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, str]:
    """(Keras policy name, why) for `requested`, one of `config.PRECISIONS`."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    bf16_flags = native_bf16_flags(cpuinfo_path)
    if requested != "auto":
        reason = "requested"
        if requested == "mixed_bfloat16" and not bf16_flags and not _gpu_capabilities():
            reason += "; the CPU has no native bfloat16: emulated, far slower than float32"
        return requested, reason
    gpus = _gpu_capabilities()
    if gpus:
        described = ", ".join(
            f"{name} ({'.'.join(map(str, cap)) if cap else 'unknown'})" for name, cap in gpus)
        if gpu_supports_float16():
            return "mixed_float16", f"GPU compute capability >= 7.0: {described}"
        return "float32", f"GPU compute capability below 7.0: {described}"
    if bf16_flags:
        return "mixed_bfloat16", f"CPU has native bfloat16: {', '.join(bf16_flags)}"
    return "float32", f"no GPU, and the CPU has no native bfloat16 ({'/'.join(NATIVE_BF16_FLAGS)})"


def apply_precision(policy: str) -> keras.mixed_precision.Policy:
    """Set the global tf_keras dtype policy; layers built afterwards follow it."""
    keras.mixed_precision.set_global_policy(policy)
    return keras.mixed_precision.global_policy()


@contextlib.contextmanager
def global_precision(policy: str):
    """`apply_precision(policy)` for the block, then back to float32 (even on errors)."""
    try:
        yield apply_precision(policy)
    finally:
        apply_precision("float32")
