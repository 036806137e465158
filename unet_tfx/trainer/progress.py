"""Training feedback for people: periodic progress lines and a training-curve picture."""

import io
import logging
import time

import tf_keras as keras

from unet_tfx.files import write_atomically

log = logging.getLogger("unet_tfx.trainer")


class ProgressLogger(keras.callbacks.Callback):
    """Logs step/total, loss, images per second and ETA every `every` steps."""

    def __init__(self, total_steps: int, batch_size: int, every: int = 10):
        super().__init__()
        self.total_steps, self.batch_size, self.every = total_steps, batch_size, every
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()
        self.step = int(self.model.optimizer.iterations.numpy())  # > 0 when resumed
        self.first_step = self.step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every and self.step != self.total_steps:
            return
        elapsed = time.monotonic() - self.start
        rate = (self.step - self.first_step) / max(elapsed, 1e-9)
        eta = (self.total_steps - self.step) / max(rate, 1e-9)
        log.info("step %d/%d (%.0f%%) loss %.4f  %.2f img/s  ETA %.0fs", self.step,
                 self.total_steps, 100 * self.step / self.total_steps, (logs or {}).get("loss", 0),
                 rate * self.batch_size, eta)


def plot_history(history: dict, path: str) -> None:
    """Write loss and Dice per epoch (numbered by `history["epoch"]` when given: a resumed run's
    first epoch need not be 1), training against validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "dice_coef", "membrane_dice", "mean_class_dice", "pixel_accuracy")
            if k in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        epochs = history.get("epoch") or range(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="eval")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as a PNG at `path` (local or a URI) via a temporary file, then
    close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())
