"""Find the inputs: two folders paired by file stem, or two multi-page TIFF stacks paired by page.

Masks are optional (unlabeled images for inference). Runs in the driver, before Beam starts, so
pairing mistakes and empty inputs fail fast; per-file checks happen later, in `decode`.
"""

import dataclasses
import re
from pathlib import Path

from PIL import Image

from unet_tfx.ingest.errors import IngestError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# Image files ingestion does not read: named in an error rather than skipped unseen.
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2")
# The split name of an ingestion without an eval split: its shards go into the output folder itself.
ALL = "all"


@dataclasses.dataclass(frozen=True)
class Ref:
    """One example to ingest: its id, its image file and optional mask, and a page for stacks."""

    id: str
    image: str
    mask: str | None = None
    page: int | None = None


def natural_key(text: str) -> tuple:
    """Sort key that compares runs of digits as numbers, so "9" comes before "10"."""
    parts = re.split(r"(\d+)", text)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], text


def find_sources(images=None, masks=None, image_stack=None, mask_stack=None) -> list[Ref]:
    """The examples to ingest, sorted by id with `natural_key`."""
    if (images is None) == (image_stack is None):
        raise IngestError("expected exactly one source of images: a folder or a TIFF stack")
    if (mask_stack if images is not None else masks) is not None:
        raise IngestError("expected masks as a folder for an image folder, or as a TIFF stack for "
                          "an image stack, not a mix of both")
    if images is not None:
        refs = _pair_folders(Path(images), None if masks is None else Path(masks))
    else:
        refs = _stack_pages(Path(image_stack), None if mask_stack is None else Path(mask_stack))
    return sorted(refs, key=lambda ref: natural_key(ref.id))


def split_eval(refs: list[Ref], eval_count: int, eval_ids=()) -> dict[str, list[Ref]]:
    """{"train": ..., "eval": ...} with `eval_count` refs spread evenly over `refs` for eval, or
    exactly the refs of `eval_ids` when given.

    The k-th eval ref is refs[(k + 1) * n // eval_count - 1]: of 30 refs, 6 are every 5th one.
    With eval_count 0 (and no eval_ids) everything goes to the one split `ALL`.
    """
    if eval_ids:
        known = {ref.id for ref in refs}
        if unknown := set(eval_ids) - known:
            raise IngestError(f"eval ids not among the {len(refs)} examples: {_some(unknown)}")
        if len(set(eval_ids)) >= len(refs):
            raise IngestError("every example is in eval_ids: training needs at least one")
        return {"train": [r for r in refs if r.id not in eval_ids],
                "eval": [r for r in refs if r.id in eval_ids]}
    if not 0 <= eval_count < len(refs):
        raise IngestError(f"eval_count {eval_count}: expected 0 to {len(refs) - 1}: there are "
                          f"{len(refs)} examples and training needs at least one")
    if eval_count == 0:
        return {ALL: list(refs)}
    picked = {(k + 1) * len(refs) // eval_count - 1 for k in range(eval_count)}
    return {
        "train": [r for i, r in enumerate(refs) if i not in picked],
        "eval": [r for i, r in enumerate(refs) if i in picked],
    }


def _list_folder(folder: Path) -> dict[str, Path]:
    """Stem → file, for the PNG/TIFF files directly in `folder`."""
    if not folder.is_dir():
        raise IngestError(f"{folder}: not a folder: expected a directory of PNG/TIFF files")
    found: dict[str, Path] = {}
    files = [path for path in sorted(folder.iterdir()) if path.is_file()]
    if other := [path.name for path in files if path.suffix.lower() in OTHER_IMAGE_SUFFIXES]:
        raise IngestError(f"{folder}: {_some(other)}: unsupported image format: expected PNG or "
                          "TIFF files (convert them losslessly; JPEG would also blur mask levels)")
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise IngestError(f"{found[path.stem]} and {path.name}: expected one file per stem")
        found[path.stem] = path
    if not found:
        raise IngestError(f"{folder}: no images: expected *.png, *.tif or *.tiff files in it")
    return found


def _pair_folders(images: Path, masks: Path | None) -> list[Ref]:
    image_files = _list_folder(images)
    if masks is None:
        return [Ref(stem, str(path)) for stem, path in image_files.items()]
    mask_files = _list_folder(masks)
    problems = []
    if alone := image_files.keys() - mask_files.keys():
        problems.append(f"images without a mask in {masks}: {_some(alone)}")
    if alone := mask_files.keys() - image_files.keys():
        problems.append(f"masks without an image in {images}: {_some(alone)}")
    if problems:
        raise IngestError("; ".join(problems) + " (expected one mask per image, same file stem)")
    return [Ref(stem, str(path), str(mask_files[stem])) for stem, path in image_files.items()]


def _stack_pages(image_stack: Path, mask_stack: Path | None) -> list[Ref]:
    count = _count_pages(image_stack)
    if mask_stack is not None and (masks := _count_pages(mask_stack)) != count:
        raise IngestError(f"{mask_stack} has {masks} pages but {image_stack} has {count}: "
                          "expected one mask page per image page")
    digits = max(3, len(str(count - 1)))
    return [
        Ref(f"{image_stack.stem}-{page:0{digits}d}", str(image_stack),
            None if mask_stack is None else str(mask_stack), page)
        for page in range(count)
    ]


def _count_pages(stack: Path) -> int:
    if not stack.is_file():
        raise IngestError(f"{stack}: no such file: expected a multi-page TIFF stack")
    if stack.stat().st_size == 0:
        raise IngestError(f"{stack}: the stack is empty: expected a TIFF with at least one page")
    try:
        with Image.open(stack) as img:
            return getattr(img, "n_frames", 1)
    except (OSError, SyntaxError, ValueError) as exc:
        raise IngestError(f"{stack}: cannot read it ({exc}): expected a multi-page TIFF") from None


def _some(stems, limit: int = 8) -> str:
    """Up to `limit` stems in natural order, and how many more there are."""
    ordered = sorted(stems, key=natural_key)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more
