"""Synthetic EM-like membrane image/mask pairs at any count, written as ingested TFRecord shards.

    python bench/synth.py --count 5000 --out bench_out/synth-5000 [--eval-share 0.2] [--seed 0]
    unet-tfx run --profile test --examples-dir bench_out/synth-5000

The folder is what `unet-tfx ingest --eval-count K` writes: GZIP TFRecord shards of 64 examples
in train/ and eval/ (`unet_tfx.ingest.records.make_example`, the ingestion's own example
format), and ingest.json. Eval ids are spread evenly over the id order, as ingestion picks them.

Each pair is a function of (seed, index) only, whatever the worker count:
- cells: a Voronoi tessellation of ~100-150 seeds drawn with a smoothly varying density (small
  and large cells side by side), bent by a smooth random displacement field;
- membranes: region boundaries dilated to 3-7 px (a smoothly varying width), label 0; cells 255;
- intensities fitted to data/membrane (30 ISBI 2012 images: membrane share 22%, membrane pixels
  mean 85 / std 33, cell pixels mean 138 / std 40, pixel-to-pixel noise 16): per-cell levels,
  granular texture, dark organelle blobs inside cells (labeled cell, as in ISBI), soft dark
  membranes of varying contrast, blur + noise, gentle shading, per-image gain and offset.

About 10 pairs/s per core: 5,000 pairs in 4-5 minutes on 2 cores. Progress (rate, ETA) goes to
stderr.
"""

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

EXAMPLES_PER_SHARD = 64  # as unet_tfx.ingest.beam_pipeline
SHARD = "data-{:05d}-of-{:05d}.tfrecord.gz"  # records.SHARD_PREFIX + SHARD_TEMPLATE + SUFFIX
MANIFEST = "ingest.json"
PLAN = "synth-plan.json"  # in the staging folder while it is written


# ----------------------------------------------------------------------------- the generator
def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field of unit std: `cells`² noise, bicubically upsampled to size²."""
    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    small = ndi.gaussian_filter(small, 0.8)
    small /= small.std() + 1e-6
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Granular texture: blurred noise at half resolution, upsampled (about 3 px grains)."""
    half = max(size // 2, 1)
    grains = ndi.gaussian_filter(rng.standard_normal((half, half), dtype=np.float32), 0.75)
    grains /= grains.std() + 1e-6
    return np.asarray(Image.fromarray(grains, mode="F").resize((size, size), Image.BICUBIC))


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices folded back into [0, size) by mirroring at the edges."""
    index = np.abs(index)
    return np.where(index > size - 1, 2 * (size - 1) - index, index)


def cell_labels(rng: np.random.Generator, size: int) -> np.ndarray:
    """int32 [size, size] cell ids: a bent Voronoi tessellation of randomly dense seeds.

    The tessellation is computed at half resolution and sampled at bent full-resolution
    coordinates (nearest cell), which draws its boundaries at full resolution.
    """
    coarse = max(size // 2, 1)
    density = np.exp(0.6 * _smooth(rng, coarse, 5))
    count = max(int(rng.integers(100, 150) * (size / 512) ** 2), 2)
    candidates = rng.integers(0, coarse, (count * 4, 2))
    accept = density[candidates[:, 0], candidates[:, 1]]
    points = candidates[rng.random(len(candidates)) < accept / accept.max()][:count]
    seeds = np.zeros((coarse, coarse), np.int32)
    seeds[points[:, 0], points[:, 1]] = np.arange(1, len(points) + 1)
    nearest = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    labels = seeds[nearest[0], nearest[1]]
    bend = rng.uniform(8, 14)
    scale = coarse / size
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rows = np.rint((rows + bend * _smooth(rng, size, 12)) * scale).astype(np.int32)
    cols = np.rint((cols + bend * _smooth(rng, size, 12)) * scale).astype(np.int32)
    return labels[_mirror(rows, coarse), _mirror(cols, coarse)]


def make_pair(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): uint8 [size, size] each; mask 0 = membrane, 255 = cell (like the labels)."""
    labels = cell_labels(rng, size)
    boundary = np.zeros((size, size), bool)
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    boundary[:-1, :] |= labels[:-1, :] != labels[1:, :]
    distance = ndi.distance_transform_edt(~boundary).astype(np.float32)
    half_width = rng.uniform(2.3, 3.2) + 0.8 * _smooth(rng, size, 6)
    membrane = distance < half_width

    level = rng.normal(143, 22, labels.max() + 1).astype(np.float32)
    image = level[labels] + 16 * _smooth(rng, size, 40) + 15 * _texture(rng, size)
    organelles = (_smooth(rng, size, 48) > rng.uniform(1.7, 2.3)) & (distance > half_width + 2)
    image[organelles] -= rng.uniform(35, 60)
    soft = ndi.gaussian_filter(membrane.astype(np.float32), 1.0)
    dark = rng.uniform(77, 97) + 22 * _smooth(rng, size, 10)
    image = image * (1 - soft) + dark * soft
    image += 34 * rng.standard_normal((size, size), dtype=np.float32)
    image = ndi.gaussian_filter(image, 0.6)
    shading = 1 + 0.12 * _smooth(rng, size, 2)
    gain, offset = rng.uniform(0.9, 1.3), rng.uniform(-20, 10)
    image = (image - 128) * gain * shading + 128 + offset
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return pixels, np.where(membrane, 0, 255).astype(np.uint8)


def pair(seed: int, index: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Pair number `index` of the set `seed`: the same whichever worker makes it."""
    return make_pair(np.random.default_rng([seed, index]), size)


def pair_stats(images, masks) -> dict:
    """Membrane share, mean/std of membrane and cell pixels, pixel-to-pixel noise (std)."""
    images = np.asarray(images, np.float64)
    membrane = np.asarray(masks) < 128
    diffs = images[..., :, 1:] - images[..., :, :-1]
    return {
        "membrane_share": float(membrane.mean()),
        "membrane_mean": float(images[membrane].mean()),
        "membrane_std": float(images[membrane].std()),
        "cell_mean": float(images[~membrane].mean()),
        "cell_std": float(images[~membrane].std()),
        "noise": float(diffs.std() / math.sqrt(2)),
    }


def bundled_stats(data_dir=None) -> dict:
    """`pair_stats` of the bundled data/membrane pairs."""
    data_dir = Path(data_dir or Path(__file__).resolve().parent.parent / "data" / "membrane")
    names = sorted((data_dir / "image").glob("*.png"))
    images = [np.asarray(Image.open(name)) for name in names]
    masks = [np.asarray(Image.open(data_dir / "label" / name.name)) for name in names]
    return pair_stats(images, masks)


# ----------------------------------------------------------------------------- the writer
def eval_indices(count: int, eval_count: int) -> set[int]:
    """Eval picks spread evenly, as `unet_tfx.ingest.sources.split_eval`: of 30, every 5th."""
    return {(k + 1) * count // eval_count - 1 for k in range(eval_count)}


def example_id(index: int) -> str:
    return f"synth-{index:06d}"


_done = None  # a shared counter of pairs written, set in each worker


def _init_worker(counter) -> None:
    global _done
    _done = counter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _write_shard(task) -> int:
    """Write one shard of pairs; the byte size written."""
    path, seed, size, indices = task
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as importing unet_tfx does
    import tensorflow as tf

    from unet_tfx.ingest.records import make_example

    with tf.io.TFRecordWriter(f"{path}.tmp", options="GZIP") as writer:
        for index in indices:
            image, mask = pair(seed, index, size)
            writer.write(make_example(example_id(index), image, mask))
            if _done is not None:
                with _done.get_lock():
                    _done.value += 1
    os.replace(f"{path}.tmp", path)
    return os.path.getsize(path)


def _shard_tasks(directory: Path, indices: list[int], seed: int, size: int) -> list:
    shards = max(math.ceil(len(indices) / EXAMPLES_PER_SHARD), 1)
    return [(str(directory / SHARD.format(i, shards)), seed, size, indices[i::shards])
            for i in range(shards)]


def synthesize(out, count: int, *, eval_share: float = 0.2, seed: int = 0, size: int = 512,
               workers: int = 0, overwrite: bool = False, progress=sys.stderr) -> dict:
    """Write `count` pairs under `out` (train/, eval/, ingest.json); the manifest written."""
    if count < 1:
        raise ValueError(f"count {count}: expected at least 1")
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval share {eval_share}: expected 0 <= share < 1")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    eval_count = min(round(count * eval_share), count - 1)
    if eval_share > 0 and count > 1:
        eval_count = max(eval_count, 1)
    picked = eval_indices(count, eval_count) if eval_count else set()
    splits = {"train": [i for i in range(count) if i not in picked],
              "eval": sorted(picked)}
    if not splits["eval"]:
        del splits["eval"]
    # A run killed midway resumes: shards appear under their final name only when complete.
    staging = out.with_name(out.name + ".partial")
    plan = {"count": count, "eval_share": eval_share, "seed": seed, "size": size}
    if not (staging / PLAN).exists() or json.loads((staging / PLAN).read_text()) != plan:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / PLAN).write_text(json.dumps(plan))
    tasks = []
    for split, indices in splits.items():
        (staging / split).mkdir(parents=True, exist_ok=True)
        tasks += _shard_tasks(staging / split, indices, seed, size)
    done = [task for task in tasks if os.path.exists(task[0])]
    tasks = [task for task in tasks if task not in done]
    if done and progress:
        print(f"resuming {staging}: {len(done)} shards already written", file=progress)
    count_left = sum(len(task[-1]) for task in tasks)

    workers = max(min(workers or os.cpu_count() or 1, len(tasks)), 1)
    started = time.monotonic()
    if workers == 1:  # in this process: no worker start-up (TensorFlow's import) to pay
        sizes, written = [], 0
        for task in tasks:
            sizes.append(_write_shard(task))
            written += len(task[-1])
            _progress(progress, written, count_left, started)
    else:
        context = multiprocessing.get_context("spawn")  # no TensorFlow state forked
        counter = context.Value("l", 0)
        with context.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.map_async(_write_shard, tasks, chunksize=1)
            shown = (0, started)
            while not pending.ready():
                pending.wait(1.0)
                now = time.monotonic()
                if (counter.value != shown[0] and now - shown[1] >= 5) or now - shown[1] >= 30:
                    shown = (counter.value, now)
                    _progress(progress, counter.value, count_left, started)
            sizes = pending.get()
    seconds = time.monotonic() - started
    manifest = {
        "count": count,
        "labeled": True,
        "sources": {"synthetic": f"bench/synth.py --count {count} --seed {seed} --size {size}"},
        "image_height": size,
        "image_width": size,
        "channels": 1,
        "splits": {split: {"dir": split, "count": len(indices),
                           "ids": [example_id(i) for i in indices]}
                   for split, indices in splits.items()},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (staging / PLAN).unlink()
    sizes += [os.path.getsize(task[0]) for task in done]
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    total = sum(sizes)
    if progress:
        print(f"wrote {count} pairs ({', '.join(f'{s} {len(i)}' for s, i in splits.items())}) "
              f"in {seconds:.1f} s ({count_left / max(seconds, 1e-9):.1f} pairs/s, {workers} "
              f"workers): {total / 1e6:.1f} MB in {len(sizes)} shards at {out}", file=progress)
    return {**manifest, "bytes": total, "seconds": seconds, "workers": workers}


def _progress(stream, done: int, total: int, started: float) -> None:
    if not stream:
        return
    elapsed = time.monotonic() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 else "starting the workers"
    print(f"  {done}/{total} ({100 * done / total:.0f}%), {rate:.1f} pairs/s, {eta}",
          file=stream, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True, help="image/mask pairs")
    parser.add_argument("--out", required=True, help="the examples folder to write")
    parser.add_argument("--eval-share", type=float, default=0.2,
                        help="share of pairs in eval/ (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: every core)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--stats", type=int, default=0, metavar="K",
                        help="also print the statistics of the first K pairs beside the "
                        "bundled data's")
    args = parser.parse_args(argv)
    try:
        synthesize(args.out, args.count, eval_share=args.eval_share, seed=args.seed,
                   size=args.size, workers=args.workers, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"synth: {error}", file=sys.stderr)
        return 2
    if args.stats:
        pairs = [pair(args.seed, i, args.size) for i in range(min(args.stats, args.count))]
        synthetic = pair_stats([p[0] for p in pairs], [p[1] for p in pairs])
        bundled = bundled_stats()
        print(f"{'':<16}{'synthetic':>10}{'bundled':>10}")
        for key in synthetic:
            print(f"{key:<16}{synthetic[key]:>10.3f}{bundled[key]:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
