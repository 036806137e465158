"""What the console shows: the pipeline's progress and real warnings, not library noise. Every
record still goes to the run's log file under the pipeline root."""

import logging
import os
import re
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
]))
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


def setup(verbose: bool = False) -> None:
    """Console logging (everything with `verbose`), warnings routed through logging, and the
    Google client libraries' Python-version notice silenced at its source."""
    warnings.filterwarnings("ignore", message="You are using a non-supported Python version",
                            category=FutureWarning)
    logging.captureWarnings(True)
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
