"""Keep AutoGraph from converting Keras 2's own code.

AutoGraph leaves the `tensorflow` and `keras` packages as they are, but TensorFlow 2.16 does not
know `tf_keras`, where Keras 2 now lives: tracing the U-Net's train step converted some 6,500 of
its functions and took 22-26 s instead of 4.4 s (bench/bench_trace.py). Later TensorFlow
releases add this same rule (tensorflow/python/autograph/core/config.py). Our own code, and
layers users subclass, are still converted.
"""

from tensorflow.python.autograph.core import config


def tf_keras_rules() -> list:
    """AutoGraph's do-not-convert rules for `tf_keras`, in order."""
    return [rule for rule in config.CONVERSION_RULES
            if isinstance(rule, config.DoNotConvert) and rule.matches("tf_keras")]


def leave_tf_keras_unconverted() -> None:
    """Add AutoGraph's do-not-convert rule for `tf_keras` unless TensorFlow already has it."""
    if not tf_keras_rules():
        config.CONVERSION_RULES = (*config.CONVERSION_RULES, config.DoNotConvert("tf_keras"))
