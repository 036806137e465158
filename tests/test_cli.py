"""The `unet-tfx` command line and the Kubeflow compilation."""

import json
import logging
import subprocess
import sys

import pytest

from unet_tfx.config import PROFILES, load_profile


def test_help_lists_every_subcommand_without_loading_tensorflow():
    code = ("import sys\nfrom unet_tfx.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    print('tensorflow loaded:', 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for command in ("ingest", "run", "compile", "submit", "predict", "report", "cv"):
        assert command in out
    assert out.endswith("tensorflow loaded: False\n")


def test_every_output_flag_has_the_short_form():
    from unet_tfx.cli import build_parser

    for command in (["ingest", "--images", "i"], ["cv"], ["compile", "--image", "i"],
                    ["predict", "--model-dir", "m", "x.png"],
                    ["serving-config", "--serving-dir", "s"]):
        assert build_parser().parse_args([*command, "-o", "somewhere"]).output == "somewhere"


def test_help_gives_the_profiles_own_defaults(capsys):
    from unet_tfx.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    quick, full = PROFILES["quick"].training, PROFILES["full"].training
    assert f"(default: the profile's: quick {quick.batch_size}, full {full.batch_size})" in out
    assert f"(default: quick {quick.patch_size}, full {full.patch_size})" in out
    assert f"(initial) rate (default: {quick.learning_rate:g})" in out
    assert f"cell-only Dice loss (default: {quick.loss})" in out
    assert f"the report (default: {quick.mask_threshold:g}; `cv` scores others)" in out


def test_profiles_scale_the_same_model():
    assert PROFILES["quick"].training.base_filters == 32  # the seed model
    assert PROFILES["test"].training.base_filters < 32
    assert load_profile("test", train_steps=9).training.train_steps == 9
    with pytest.raises(ValueError, match="quick"):
        load_profile("huge")


def test_console_shows_progress_and_real_warnings_not_library_noise():
    from unet_tfx.console import console_filter

    def record(name, level, message):
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    assert console_filter(record("absl", logging.INFO, "Component Trainer is running."))
    assert console_filter(record("absl", logging.INFO, "Component Pusher is finished."))
    assert console_filter(record("unet_tfx.trainer", logging.INFO, "step 10/700 ..."))
    assert not console_filter(record("absl", logging.INFO, "udf_utils.get_fn {'train_args'}"))
    assert not console_filter(record("apache_beam.typehints", logging.INFO, "type hint"))
    assert not console_filter(record(
        "absl", logging.WARNING, "ArtifactQuery.property_predicate is not supported."))
    assert console_filter(record("absl", logging.WARNING, "a real warning"))
    assert console_filter(record("py.warnings", logging.WARNING, "UserWarning: something"))


def test_the_log_file_keeps_everything(tmp_path):
    from unet_tfx import console

    path = console.log_to_file(str(tmp_path))
    try:
        logging.getLogger("apache_beam.typehints").warning("kept in the file")
        logging.getLogger("absl").error("ArtifactQuery.property_predicate is not supported.")
    finally:
        for handler in logging.getLogger().handlers[:]:
            if getattr(handler, "baseFilename", None) == path:
                handler.close()
                logging.getLogger().removeHandler(handler)
    text = open(path).read()
    assert "kept in the file" in text and "property_predicate" in text
    assert path.startswith(str(tmp_path / "logs"))


def test_console_setup_twice_keeps_one_console_handler():
    from unet_tfx import console

    console.setup()
    console.setup()
    names = [h.get_name() for h in logging.getLogger().handlers]
    assert names.count(console.CONSOLE) == 1


def test_a_command_prints_its_answer_and_no_library_noise(tmp_path):
    """In a fresh process (TensorFlow, TFX and Google's client libraries loaded by the command):
    no CUDA plugin-registration lines, no deprecation FutureWarnings, only the answer."""
    result = subprocess.run(
        [sys.executable, "-m", "unet_tfx.cli", "history", "--pipeline-root", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"unet-tfx history: {tmp_path}/metadata.sqlite: no ML Metadata store (run the pipeline "
        "first)"]


def test_native_lines_other_than_the_known_noise_are_kept(capfd):
    import os

    from unet_tfx.console import native_stderr_filtered

    with native_stderr_filtered():
        os.write(2, b"E cuda_fft.cc:479] Unable to register cuFFT factory: twice\n")
        os.write(2, b"F a real native error\n")
    assert capfd.readouterr().err == "F a real native error\n"


def test_tensorflow_records_go_through_the_console_filter_and_the_log_file():
    from unet_tfx import console

    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(logging.StreamHandler())  # what TensorFlow adds when it loads first
    console.setup()
    assert tf_logger.handlers == [] and tf_logger.propagate


def test_run_reads_sizes_from_the_default_examples_folder_as_from_examples_dir(tmp_path,
                                                                              monkeypatch):
    """RGB 200x300 data ingested into out/examples: plain `run` must not decode it as the
    profile's 512x512 gray."""
    from unet_tfx.cli import _config, build_parser

    manifest = tmp_path / "out" / "examples" / "ingest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"image_height": 200, "image_width": 300, "channels": 3}))
    monkeypatch.chdir(tmp_path)
    for flags in ([], ["--examples-dir", "out/examples"]):
        config = _config(build_parser().parse_args(["run", *flags]))
        assert (config.image_height, config.image_width, config.channels) == (200, 300, 3)


def test_data_flags_that_would_be_dropped_are_refused(capsys):
    from unet_tfx.cli import main

    for argv, message in (
            (["run", "--dataset", "d.yaml", "--images", "x"], "--dataset and --images: expected "
             "one of them"),
            (["cv", "--eval-count", "3"], "--masks and --eval-count go with --images"),
            (["report", "--masks", "m"], "--masks and --eval-count go with --images")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_a_local_run_refuses_a_remote_pipeline_root(tmp_path, capsys, monkeypatch):
    from unet_tfx.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--profile", "test", "--pipeline-root", "gs://bucket/tfx"]) == 2
    assert ("--pipeline-root gs://bucket/tfx: a local run keeps ML Metadata in SQLite"
            in capsys.readouterr().err)
    assert not (tmp_path / "gs:").exists()


def test_augmentation_flags_reach_the_trainers_config():
    from unet_tfx.cli import _config, build_parser

    def training(*flags):
        return _config(build_parser().parse_args(["run", *flags])).training

    assert (training().elastic_sigma, training().augment) == (0.0, True)
    cfg = training("--elastic-sigma", "10", "--rotate-degrees", "15", "--brightness", "0.1",
                   "--gamma", "0.2")
    assert (cfg.elastic_sigma, cfg.rotate_degrees, cfg.brightness, cfg.gamma, cfg.scale) == (
        10, 15, 0.1, 0.2, 0)
    assert training("--no-augment").augment is False


def test_learning_rate_schedule_flag_reaches_the_trainers_config():
    from unet_tfx.cli import _config, build_parser
    from unet_tfx.config import TrainingConfig

    def schedule(*flags):
        return _config(build_parser().parse_args(["cv", *flags])).training.learning_rate_schedule

    assert (schedule(), schedule("--learning-rate-schedule", "constant")) == ("cosine", "constant")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--learning-rate-schedule", "linear"])
    with pytest.raises(ValueError, match="learning_rate_schedule must be one of cosine, constant"):
        TrainingConfig(learning_rate_schedule="step")


def test_loss_flag_reaches_the_trainers_config():
    from unet_tfx.cli import _config, build_parser
    from unet_tfx.config import LOSS_NAMES, TrainingConfig
    from unet_tfx.trainer.losses import LOSSES

    def loss(*flags):
        return _config(build_parser().parse_args(["compile", "--image", "i", *flags])).training.loss

    assert (loss(), loss("--loss", "dice2"), loss("--loss", "dice")) == (
        "dice2_bce", "dice2", "dice")
    assert sorted(LOSS_NAMES) == sorted(LOSSES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--loss", "bce"])
    with pytest.raises(ValueError, match="loss must be one of dice, dice2, dice2_bce; got 'bce'"):
        TrainingConfig(loss="bce")


def test_size_and_rate_flags_reach_the_trainers_config(tmp_path, capsys):
    from unet_tfx.cli import _config, build_parser, main

    def training(*flags):
        return _config(build_parser().parse_args(["cv", *flags])).training

    default = training()
    assert (default.batch_size, default.patch_size, default.learning_rate) == (8, 128, 1e-3)
    given = training("--batch-size", "2", "--patch-size", "256", "--learning-rate", "3e-4")
    assert (given.batch_size, given.patch_size, given.learning_rate) == (2, 256, 3e-4)
    assert (default.seed, training("--training-seed", "7").seed) == (42, 7)
    assert training("--profile", "full").patch_size == 256  # GPU workers keep 256² patches
    full = training("--profile", "full", "--patch-size", "512")
    assert (full.batch_size, full.patch_size) == (16, 512)
    for flags, message in ((("--patch-size", "100"), "patch_size must be a positive multiple "
                            "of 2\\*\\*depth = 16; got 100"),
                           (("--batch-size", "0"), "batch_size must be an integer >= 1; got 0"),
                           (("--learning-rate", "-1"), "learning_rate must be > 0; got -1.0")):
        with pytest.raises(ValueError, match=message):
            training(*flags)
    root = tmp_path / "tfx"
    assert main(["run", "--patch-size", "100", "--pipeline-root", str(root),
                 "--examples-dir", str(tmp_path / "examples")]) == 2  # a message, no traceback
    assert capsys.readouterr().err.strip() == (
        "unet-tfx run: TrainingConfig.patch_size must be a positive multiple of 2**depth = 16; "
        "got 100")
    assert not root.exists() and not (tmp_path / "examples").exists()


def test_batch_norm_flag_reaches_the_trainers_config():
    from unet_tfx.cli import _config, build_parser

    def batch_norm(*flags):
        return _config(build_parser().parse_args(["run", *flags])).training.batch_norm

    assert (batch_norm(), batch_norm("--no-batch-norm"), batch_norm("--batch-norm")) == (
        True, False, True)
