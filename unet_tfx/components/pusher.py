"""Push a blessed model to the TF Serving model base: only when it differs from the version
served, only complete, and keeping a bounded number of old versions.

TF Serving loads every numeric folder under `--model_base_path` it sees and ignores other
names. A version is written under a non-numeric temporary name in the same base (`.partial-N`)
and renamed to `N` only when complete: on a local or mounted base the rename is atomic, so TF
Serving never sees half a model, and a push killed half-way leaves no numeric folder. (On
`gs://` a rename is a copy and a delete per object: TF Serving polling mid-rename may see the
version folder before its last file, the SavedModel's `saved_model.pb` included; it then fails
to load that version and retries on its next poll.)
"""

import logging
import os
import time

import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import io_utils, path_utils

from unet_tfx.serving.local_model import served_versions

log = logging.getLogger("unet_tfx.components")

PARTIAL_PREFIX = ".partial-"
FINGERPRINT = "fingerprint.pb"  # written by TensorFlow into every SavedModel (checksums)


class PushError(RuntimeError):
    """The serving base cannot take the new version; the served version is unchanged."""


def same_model(a: str, b: str) -> bool:
    """Whether two SavedModel folders hold the same graph and weights (their fingerprints)."""
    paths = [os.path.join(d, FINGERPRINT) for d in (a, b)]
    if not all(tf.io.gfile.exists(p) for p in paths):
        return False
    return io_utils.read_bytes_file(paths[0]) == io_utils.read_bytes_file(paths[1])


def push_version(source: str, model_base: str, keep: int) -> tuple[int | None, str]:
    """Copy `source` in as a new version unless it equals the one served; then keep the newest
    `keep` versions. Returns (version or None, what happened). A `.partial-N` folder a killed
    push left behind (one pusher writes to a model base at a time) is removed first."""
    for name in tf.io.gfile.listdir(model_base) if tf.io.gfile.isdir(model_base) else []:
        if name.startswith(PARTIAL_PREFIX):
            tf.io.gfile.rmtree(os.path.join(model_base, name.rstrip("/")))
            log.info("removed %s, left by a push that did not finish", name.rstrip("/"))
    versions = served_versions(model_base)
    if versions and same_model(source, os.path.join(model_base, str(versions[-1]))):
        return None, f"identical to the served version {versions[-1]}: nothing pushed"
    version = max(int(time.time()), versions[-1] + 1 if versions else 0)
    partial = os.path.join(model_base, f"{PARTIAL_PREFIX}{version}")
    target = os.path.join(model_base, str(version))
    try:
        io_utils.copy_dir(source, partial)
        tf.io.gfile.rename(partial, target)
    except (tf.errors.OpError, OSError) as error:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.rmtree(partial)
        raise PushError(f"cannot push to {model_base}: {error}; the served version "
                        f"({versions[-1] if versions else 'none'}) is unchanged") from error
    for old in served_versions(model_base)[:-keep] if keep > 0 else []:
        tf.io.gfile.rmtree(os.path.join(model_base, str(old)))
        log.info("removed version %d (keeping the newest %d)", old, keep)
    return version, f"pushed version {version} to {target}"


@tfx.dsl.components.component
def ServingPusher(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    pushed_model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.PushedModel],
    model_base: tfx.dsl.components.Parameter[str],
    keep_versions: tfx.dsl.components.Parameter[int] = 3,
) -> None:
    """Push `model` to `model_base/<version>` when blessed and different from the served one."""
    version = None
    if not model_blessing.get_int_custom_property("blessed"):
        message = "not blessed: nothing pushed"
    else:
        version, message = push_version(path_utils.serving_model_path(model.uri), model_base,
                                        keep_versions)
    log.info("Pusher: %s", message)
    pushed_model.set_int_custom_property("pushed", int(version is not None))
    if version is not None:
        pushed_model.set_string_custom_property(
            "pushed_destination", os.path.join(model_base, str(version)))
        pushed_model.set_int_custom_property("pushed_version", version)
