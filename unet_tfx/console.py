"""What the console shows: the pipeline's progress and real warnings, not library noise. Every
record still goes to the run's log file under the pipeline root."""

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
import warnings

COMPONENT_PROGRESS = re.compile(r"Component \S+ is (running|finished)")
# Known, harmless library chatter at WARNING level (kept in the log file).
NOISE = re.compile("|".join([
    r"ArtifactQuery\.property_predicate is not supported",
    r"does not have payload_format custom property",
    r"tf_record_iterator \(from tensorflow",
    r"AutoGraph could not transform",
    r"Couldn't find python-snappy",
    r"Value in checkpoint could not be found in the restored object",
    r"Not using the in-place Transform because",
]))
# What TensorFlow's native libraries print on every import, GPU or not (XLA registers the CUDA
# plugins twice): harmless, and not a Python log record.
NATIVE_NOISE = re.compile(r"Unable to register cu(FFT|DNN|BLAS) factory")
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
CONSOLE = "unet_tfx.console"


def console_filter(record: logging.LogRecord) -> bool:
    """Our own INFO lines, TFX's component start/finish lines, and every warning but NOISE."""
    message = record.getMessage()
    if record.levelno > logging.INFO:
        return not NOISE.search(message)
    if record.name.startswith("unet_tfx"):
        return True
    return record.name == "absl" and bool(COMPONENT_PROGRESS.match(message))


@contextlib.contextmanager
def native_stderr_filtered():
    """File descriptor 2 captured for the block; every line but NATIVE_NOISE is written back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not NATIVE_NOISE.search(line):
                    sys.stderr.write(line)


def silence_library_noise() -> None:
    """Before anything else: the Google client libraries' deprecation notices (FutureWarnings
    about this Python, grpcio and google-cloud-storage versions, which the stack pins) ignored
    at their source, and TensorFlow imported with its native plugin-registration noise left
    out. Other warnings stay."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
    with native_stderr_filtered():
        import tensorflow  # noqa: F401


def setup(verbose: bool = False) -> None:
    """Console logging (everything with `verbose`), warnings routed through logging, and
    TensorFlow's own console handler (added when it loads before logging is set up) removed:
    its records reach the console through the filter and the log file like every other."""
    logging.captureWarnings(True)
    logging.getLogger("tensorflow").handlers.clear()
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == CONSOLE]:  # once per process
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.set_name(CONSOLE)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        handler.addFilter(console_filter)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)


def log_to_file(folder: str) -> str:
    """Also write every record to `folder/logs/run-<time>.log`; returns its path."""
    os.makedirs(os.path.join(folder, "logs"), exist_ok=True)
    path = os.path.join(folder, "logs", f"run-{time.strftime('%Y%m%d-%H%M%S')}.log")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    return path
