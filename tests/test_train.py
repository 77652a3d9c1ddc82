"""Training runs end to end on tiny IDX files: learning, metrics, checkpoints,
exact resume after Ctrl-C, divergence, and the train / eval CLI."""
import csv
import os
import signal

import numpy as np
import pytest

import tinyconv
from tinyconv import train
from tinyconv.cli import main


@pytest.fixture
def tiny_mnist(quadrant_data):
    return quadrant_data


def config(data_dir, **overrides):
    settings = dict(model="fashion_cnn", data_dir=data_dir, epochs=2, batch_size=16, lr=0.05, seed=3)
    settings.update(overrides)
    return train.TrainConfig(**settings)


def quiet(*args, **kwargs):
    pass


def test_a_run_learns_and_writes_its_files(tiny_mnist, tmp_path):
    history = train.train(config(tiny_mnist), str(tmp_path / "run"), log=quiet)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["test_acc"] > 0.5  # chance is 0.25 on four classes
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    files = set(os.listdir(tmp_path / "run"))
    assert {"checkpoint.npz", "config.json", "metrics.csv"} <= files
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[1]["test_acc"]) == pytest.approx(history[-1]["test_acc"])


def test_same_seed_same_weights(tiny_mnist, tmp_path):
    train.train(config(tiny_mnist, epochs=1), str(tmp_path / "a"), log=quiet)
    train.train(config(tiny_mnist, epochs=1), str(tmp_path / "b"), log=quiet)
    a, _ = train.load_run(str(tmp_path / "a"))
    b, _ = train.load_run(str(tmp_path / "b"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_ctrl_c_mid_epoch_then_resume_gives_identical_weights(tiny_mnist, tmp_path):
    straight = str(tmp_path / "straight")
    train.train(config(tiny_mnist), straight, log=quiet)

    steps = {"n": 0}

    def progress_that_presses_ctrl_c(total, initial, epoch):
        class Bar:
            def update(self, n, **metrics):
                steps["n"] += 1
                if steps["n"] == 8:  # mid-way through epoch 2 (6 steps per epoch)
                    os.kill(os.getpid(), signal.SIGINT)

            def close(self):
                pass

        return Bar()

    interrupted = str(tmp_path / "interrupted")
    with pytest.raises(train.StopRequested):
        train.train(config(tiny_mnist), interrupted, progress=progress_that_presses_ctrl_c, log=quiet)
    state = tinyconv.load(os.path.join(interrupted, "checkpoint.npz"))
    assert (state["loader"]["epoch"], state["loader"]["batch"]) == (1, 2)
    history = train.train(None, interrupted, resume=True, log=quiet)
    assert len(history) == 2
    a, _ = train.load_run(straight)
    b, _ = train.load_run(interrupted)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to the NaN is the point
def test_divergence_stops_with_a_clear_message(tiny_mnist, tmp_path):
    with pytest.raises(train.TrainingDiverged, match=r"epoch 1, step \d+ .*learning rate"):
        train.train(config(tiny_mnist, lr=1e12, optimizer="sgd"), str(tmp_path / "nan"), log=quiet)


def test_bad_settings(tiny_mnist, tmp_path):
    with pytest.raises(ValueError, match="--model 'nope' does not exist; available: .*fashion_cnn"):
        config(tiny_mnist, model="nope").validate()
    with pytest.raises(ValueError, match="--lr must be a positive number"):
        config(tiny_mnist, lr=-1.0).validate()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train.train(None, str(tmp_path), resume=True, log=quiet)
    train.train(config(tiny_mnist, epochs=1), str(tmp_path / "r"), log=quiet)
    with pytest.raises(FileExistsError, match="--resume"):
        train.train(config(tiny_mnist, epochs=1), str(tmp_path / "r"), log=quiet)


def test_cli_train_then_eval(tiny_mnist, tmp_path, capsys):
    out = str(tmp_path / "cli")
    status = main(["train", "--data-dir", tiny_mnist, "--epochs", "1", "--batch-size", "32", "--out", out,
                   "--no-progress", "--threads", "1"])
    assert status == 0
    assert "final test accuracy" in capsys.readouterr().out
    assert main(["eval", out]) == 0
    text = capsys.readouterr().out
    assert "per-class accuracy" in text and "confusion matrix" in text
    assert main(["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "apt-get install" in capsys.readouterr().err
