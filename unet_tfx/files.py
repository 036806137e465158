"""All-or-nothing file writes: a temporary sibling, then a rename, local or on gs://."""

import os


def write_atomically(path, data: str | bytes) -> None:
    """Write `data` to `path` through `<path>.partial`, renamed over `path` when complete, so
    no reader ever sees a half-written file. Local paths need no TensorFlow import."""
    path = os.fspath(path)
    partial = f"{path}.partial"
    mode = "wb" if isinstance(data, bytes) else "w"
    if "://" not in path:
        with open(partial, mode, encoding=None if mode == "wb" else "utf-8") as f:
            f.write(data)
        os.replace(partial, path)
        return
    import tensorflow as tf

    with tf.io.gfile.GFile(partial, mode) as f:
        f.write(data)
    tf.io.gfile.rename(partial, path, overwrite=True)
