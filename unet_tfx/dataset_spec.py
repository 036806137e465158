"""A dataset described in one place: a small YAML file that `ingest`, `run` and `compile` take.

    name: membrane            # names the pipeline (unet-<name>) and the served model (unet_<name>)
    images: image             # a folder of PNG/TIFF images (or image_stack: a multi-page TIFF)
    masks: label              # masks with the same file stems (or mask_stack)
    image_height: 512
    image_width: 512
    channels: 1               # 1 gray, 3 RGB
    eval_count: 6             # examples held out for evaluation, spread over the sorted ids
    # eval_ids: [a, b]        # or exactly these examples (file stems) for evaluation
    # mask_values: [0, 128, 255]  # K >= 3 classes: the mask level of each, in class order
    #                         # (without: two classes, 0 background/membrane, any other level)
    profile: quick            # the default profile for this data (--profile overrides)

Relative paths are read from the file's folder. The bundled membrane data is the default
dataset (`data/membrane/dataset.yaml`). `infer_dataset` writes such a file from a folder of
pairs; `from_examples` reads sizes from an ingested folder's manifest.
"""

import dataclasses
import json
import os

import tensorflow as tf
import yaml

from unet_tfx.config import BUNDLED_DATA, PROFILES
from unet_tfx.files import write_atomically

DATASET_FILE = "dataset.yaml"
DEFAULT_DATASET = BUNDLED_DATA / DATASET_FILE
MANIFEST = "ingest.json"  # what ingestion writes beside its shards (unet_tfx/ingest/driver.py)
SOURCES = ("images", "masks", "image_stack", "mask_stack")


class DatasetError(ValueError):
    """A dataset file or folder that cannot describe a dataset; the message names it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_height: int
    image_width: int
    channels: int = 1
    images: str = ""
    masks: str = ""
    image_stack: str = ""
    mask_stack: str = ""
    eval_count: int = 0
    eval_ids: tuple = ()
    mask_values: tuple = ()
    profile: str = "quick"

    def sources(self) -> dict:
        """The ingestion's source arguments that are set."""
        return {key: getattr(self, key) for key in SOURCES if getattr(self, key)}

    def ingest_args(self) -> dict:
        """Keyword arguments of `unet_tfx.ingest.ingest` for this dataset."""
        return {**self.sources(), "eval_count": self.eval_count, "eval_ids": self.eval_ids,
                "channels": self.channels, "mask_values": self.mask_values}


def _checked(data: dict, where: str) -> DatasetSpec:
    """A DatasetSpec from parsed YAML, every field checked; errors name `where` and the field."""
    fields = {f.name: f for f in dataclasses.fields(DatasetSpec)}
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a mapping of fields ({', '.join(fields)})")
    if unknown := sorted(set(data) - set(fields)):
        raise DatasetError(f"{where}: unknown field(s) {', '.join(unknown)}: expected some of "
                           f"{', '.join(fields)}")
    if missing := [k for k in ("name", "image_height", "image_width") if k not in data]:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, value in data.items():
        if fields[key].type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise DatasetError(f"{where}: {key} is {value!r}: expected a whole number")
        if fields[key].type is str and not isinstance(value, str):
            raise DatasetError(f"{where}: {key} is {value!r}: expected text")
    ids = data.get("eval_ids", ())
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (str, int)) for i in ids):
        raise DatasetError(f"{where}: eval_ids is {ids!r}: expected a list of example ids "
                           "(the files' stems)")
    data = {**data, "eval_ids": tuple(str(i) for i in ids)}
    values = data.get("mask_values", ())
    levels = isinstance(values, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    if not levels or (values and (len(values) < 3 or len(set(values)) != len(values))):
        raise DatasetError(f"{where}: mask_values is {values!r}: expected 3 or more distinct "
                           "mask levels 0-255 in class order (two classes need none)")
    data["mask_values"] = tuple(values)
    for key in ("image_height", "image_width"):
        if data[key] < 1:
            raise DatasetError(f"{where}: {key} is {data[key]}: expected a positive size in pixels")
    if data.get("channels", 1) not in (1, 3):
        raise DatasetError(f"{where}: channels is {data['channels']}: expected 1 (gray) or 3 (RGB)")
    if data.get("eval_count", 0) < 0:
        raise DatasetError(f"{where}: eval_count is {data['eval_count']}: expected 0 or more")
    if data.get("profile", "quick") not in PROFILES:
        raise DatasetError(f"{where}: profile is {data['profile']!r}: expected one of "
                           f"{', '.join(sorted(PROFILES))}")
    if not data["name"].replace("-", "").replace("_", "").isalnum():
        raise DatasetError(f"{where}: name is {data['name']!r}: expected letters, digits, - or _")
    return DatasetSpec(**data)


def load_dataset(path) -> DatasetSpec:
    """The dataset file at `path`, its relative source paths made absolute."""
    path = os.fspath(path)
    try:
        with tf.io.gfile.GFile(path) as f:
            data = yaml.safe_load(f)
    except tf.errors.NotFoundError:
        raise DatasetError(f"{path}: no such dataset file") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({exc})") from None
    spec = _checked(data, path)
    base = os.path.dirname(os.path.abspath(path)) if "://" not in path else os.path.dirname(path)
    return dataclasses.replace(spec, **{key: os.path.join(base, value)
                                        for key, value in spec.sources().items()})


def write_dataset(spec: DatasetSpec, path) -> None:
    """Write `spec` as a dataset file (through a temporary name, then renamed)."""
    data = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(spec).items() if v not in ("", None, ())}
    write_atomically(path, yaml.safe_dump(data, sort_keys=False))


def infer_dataset(images: str, masks: str | None, eval_count: int, name: str = "") -> DatasetSpec:
    """A dataset from a folder of pairs: size and channels read from the image headers (all must
    agree), the name from the images folder's parent unless given."""
    from PIL import Image

    from unet_tfx.ingest.decode import CHANNELS
    from unet_tfx.ingest.sources import find_sources

    sizes = {}
    for ref in find_sources(images=images, masks=masks):
        with Image.open(ref.image) as img:
            channels = CHANNELS.get(img.mode, 0)
            sizes.setdefault((img.height, img.width, channels), []).append(ref.image)
    if len(sizes) > 1:
        listing = "; ".join(f"{h}x{w}, {c} channel(s): {len(files)} file(s), e.g. {files[0]}"
                            for (h, w, c), files in sorted(sizes.items()))
        raise DatasetError(f"{images}: images differ in size or channels ({listing}): expected "
                           "one size and one pixel format per dataset")
    (height, width, channels), _ = sizes.popitem()
    if channels not in (1, 3):
        raise DatasetError(f"{images}: images have {channels} channel(s): expected 1 (gray) or "
                           "3 (RGB)")
    folder = os.path.abspath(images)
    name = name or os.path.basename(os.path.dirname(folder)) or "data"
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return DatasetSpec(name=name, image_height=height, image_width=width, channels=channels,
                       images=folder, masks=os.path.abspath(masks) if masks else "",
                       eval_count=eval_count)


def from_examples(examples_dir: str) -> dict:
    """{image_height, image_width, channels, mask_values} from the manifest ingestion wrote in a
    local `examples_dir` (or in its newest span); empty when there is none, or for a remote URI
    (compiling needs no access to the data: remote data is described by a dataset file)."""
    from unet_tfx.ingest.spans import list_spans, span_dir

    if "://" in examples_dir:
        return {}
    spans = list_spans(examples_dir)
    folder = span_dir(examples_dir, spans[-1]) if spans else examples_dir
    path = os.path.join(folder, MANIFEST)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    keys = ("image_height", "image_width", "channels")
    if manifest.get("image_height") is None:
        raise DatasetError(f"{path}: the examples differ in size: expected one size per "
                           "dataset (ingest each size into its own folder)")
    return {**{key: manifest[key] for key in keys},
            "mask_values": tuple(manifest.get("mask_values", ()))}
