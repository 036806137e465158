"""All-or-nothing output: build in a temporary sibling folder, then rename it into place."""

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from unet_tfx.ingest.errors import IngestError


@contextlib.contextmanager
def staged(output: Path, overwrite: bool):
    """Yields an empty `<output>.tmp-<random>` folder that replaces `output` if the block succeeds.

    On failure the temporary folder is removed and `output` is left as it was. With `overwrite`,
    an existing output is renamed away, the new one renamed in, and only then the old one deleted.
    """
    if output.exists() and not overwrite:
        raise IngestError(f"{output}: already exists: expected a new output location "
                          "(or pass overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the output from other users
    try:
        yield staging
        if not output.exists():
            staging.rename(output)
            return
        old = output.with_name(f"{output.name}.old-{uuid.uuid4().hex[:8]}")
        output.rename(old)
        try:
            staging.rename(output)
        except BaseException:
            old.rename(output)
            raise
        _remove(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
