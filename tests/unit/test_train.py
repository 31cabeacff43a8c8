"""The trainer's learning-rate schedule: a linear warm-up over the first epoch, then a cosine to zero, kept across a
resume (torch's LinearLR + CosineAnnealingLR in a SequentialLR)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from salesfc import distributed, settings, train
from salesfc import model as model_lib

ROWS, EPOCHS, LR = 4096, 3, 0.01


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    """Every trainer here is a single process, even when the tests run under torchrun."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def trainer(tmp_path):
    return make_trainer(tmp_path)


def make_trainer(run_dir) -> train.Trainer:
    config = settings.Config.defaults("train", epochs=EPOCHS, lr=LR, batch_size=128, device="cpu")
    model_config = model_lib.model_config(4, [3, 3, 3, 3, 3], 4, (8,), 0.0, 1)
    arrays = {"train_numeric": torch.zeros(ROWS, 4)}
    return train.Trainer(config, distributed.setup("cpu"), run_dir, arrays, {"model_config": model_config,
                                                                           "run": {}})


def expected_lr(step: int, steps_per_epoch: int) -> float:
    warmup, total = steps_per_epoch, steps_per_epoch * EPOCHS
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def lrs(trainer: train.Trainer, steps: int) -> list[float]:
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stepping the schedule without training steps
        for _ in range(steps):
            seen.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.optimizer.step()
            trainer.scheduler.step()
    return seen


def test_warm_up_over_the_first_epoch_then_a_cosine_to_zero(trainer):
    per_epoch = trainer.steps_per_epoch
    assert per_epoch == ROWS // 128
    seen = lrs(trainer, per_epoch * EPOCHS)
    assert seen == pytest.approx([expected_lr(step, per_epoch) for step in range(per_epoch * EPOCHS)], rel=1e-9,
                                 abs=1e-12)
    assert seen[per_epoch - 1] == pytest.approx(LR) and seen[-1] < LR * 1e-2


def test_a_resumed_schedule_continues_where_it_stopped(trainer, tmp_path):
    per_epoch = trainer.steps_per_epoch
    lrs(trainer, per_epoch)
    saved = trainer.state(0)
    rest = lrs(trainer, per_epoch)
    for checkpoint in (saved, {k: v for k, v in saved.items() if k != "SCHEDULER_STATE"}):  # and one from before
        again = make_trainer(tmp_path)
        torch.save(checkpoint, tmp_path / "checkpoint.pt")
        again.resume()
        assert again.epoch == 1
        assert lrs(again, per_epoch) == pytest.approx(rest, rel=1e-9, abs=1e-12)


def test_next_week_takes_its_share_of_a_multi_horizon_loss(tmp_path):
    config = settings.Config.defaults("train", epochs=EPOCHS, lr=LR, batch_size=128, device="cpu", horizon=5)
    model_config = model_lib.model_config(4, [3], 4, (8,), 0.0, 1, horizon=5)
    trainer = train.Trainer(config, distributed.setup("cpu"), tmp_path, {"train_numeric": torch.zeros(ROWS, 4)},
                            {"model_config": model_config, "run": {}})
    prediction, target = torch.zeros(1, 8, 5), torch.zeros(8, 5)
    target[:, 0] = 1.0  # next week's error alone
    alone = trainer.loss(prediction, target, torch.ones(8, 5))
    target[:, 0], target[:, 1:] = 0.0, 1.0  # the later weeks' errors alone
    later = trainer.loss(prediction, target, torch.ones(8, 5))
    assert float(alone) == pytest.approx(float(later)) and float(alone) > 0  # half the loss each


def test_huber_delta_widens_the_medians_training_loss(tmp_path):
    model_config = model_lib.model_config(4, [3], 4, (8,), 0.0, 1)
    error = 0.1  # inside a delta of 0.25, outside the default's 0.02
    prediction, target, weight = torch.full((1, 8, 1), error), torch.zeros(8, 1), torch.ones(8, 1)
    losses = {}
    for delta in (None, 0.25):
        config = settings.Config.defaults("train", epochs=EPOCHS, lr=LR, batch_size=128, device="cpu",
                                          **({} if delta is None else {"huber_delta": delta}))
        trainer = train.Trainer(config, distributed.setup("cpu"), tmp_path, {"train_numeric": torch.zeros(ROWS, 4)},
                                {"model_config": model_config, "run": {}})
        losses[delta] = float(trainer.loss(prediction, target, weight))
    assert losses[None] == pytest.approx(train.HUBER_DELTA * (error - train.HUBER_DELTA / 2))  # absolute, nearly
    assert losses[0.25] == pytest.approx(0.5 * error ** 2)  # squared


class Lost(Exception):
    pass


def test_a_refit_trains_the_chosen_epochs_on_every_week_and_resumes_where_it_stopped(monkeypatch, tmp_path):
    """--refit on: the early-stopped run goes to selection/ and chooses the epoch; the run's model is trained again
    on the training and validation weeks for that many epochs, its preprocessing fitted on them too. Killed in the
    refit and started again, it ends with the weights of a refit run straight through (dropout off)."""
    from test_distributed import prepared_frame

    from salesfc.workspace import read_json

    torch.use_deterministic_algorithms(True)
    frame, split = prepared_frame()
    known = frame[split.part(frame["event_timestamp"]) < 2]
    config = settings.Config.defaults("train", epochs=4, patience=4, device="cpu", seed=3, hidden=(32, 16), members=1,
                                      dropout=0.0, batch_size=256, refit="on")
    context = distributed.setup("cpu")

    def fit(name):
        run_dir = tmp_path / name
        run_dir.mkdir()
        return run_dir, train.fit_model(config, context, run_dir, known, split, {}, "data")

    straight_dir, straight = fit("straight")
    chosen = read_json(straight_dir / "selection" / "training.json")
    assert straight["refit"]["epochs"] == straight["best_epoch"] == chosen["best_epoch"] >= 2
    assert [h["epoch"] for h in straight["refit"]["history"]] == list(range(1, chosen["best_epoch"] + 1))
    refit_rows, rows = straight["refit"]["rows"], chosen["rows"]
    assert refit_rows["train"] == rows["train"] + rows["val"] > rows["train"] and refit_rows["val"] == 0
    assert straight["history"] == chosen["history"]  # the validation curve is the selection's
    refit_params, chosen_params = (read_json(d / "preprocess.json") for d in (straight_dir, straight_dir / "selection"))
    assert refit_params["refit"] and not chosen_params["refit"]
    assert refit_params["split"] == chosen_params["split"] == split.to_json()
    assert refit_params["scale"] != chosen_params["scale"]  # fitted on the validation weeks too

    original = train.Trainer.train_epoch

    def train_epoch(self, epoch, bar):
        if self.refit_epochs is not None and epoch == 1:
            raise Lost("the pod was lost in the refit's second epoch")
        return original(self, epoch, bar)

    monkeypatch.setattr(train.Trainer, "train_epoch", train_epoch)
    with pytest.raises(Lost):
        fit("resumed")
    assert (tmp_path / "resumed" / "selection" / "training.json").exists()
    assert not (tmp_path / "resumed" / "training.json").exists()
    monkeypatch.setattr(train.Trainer, "train_epoch", original)
    train.fit_model(config, context, tmp_path / "resumed", known, split, {}, "data")
    for name, tensor in torch.load(straight_dir / "model.pt", weights_only=True)["MODEL_STATE"].items():
        resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["MODEL_STATE"][name]
        torch.testing.assert_close(resumed, tensor, rtol=0, atol=1e-6, msg=name)
