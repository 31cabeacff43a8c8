"""train: DistributedDataParallel training of the forecaster, one process per GPU (or CPU slot).

Started three ways: ``salesfc train`` (one process), ``salesfc train --nproc-per-node N`` (starts torchrun for N
local processes), or ``torchrun -m salesfc train`` (what the TrainJob runs; torchrun reads the PET_* variables
the Kubeflow Trainer sets, so one node or many).

Each rank reads only its own shard of the series through Feast (feature_store.shard_features), in reads of a
bounded size, so no process ever holds the whole training set. The preprocessing is fitted on training rows only,
every statistic reduced over the ranks (salesfc.statistics), so it is the one a single process would fit on all the
rows. Every rank keeps its arrays on its device and draws each epoch's batches from a shuffle of its own rows by
indexing those tensors (no DataLoader, no per-sample Python). Validation sums are all-reduced, so every rank sees
the same validation loss and stops at the same epoch. Rank 0 writes a checkpoint every epoch
(``checkpoint.pt``, for resuming after a restart) and the best epoch so far (``model.pt``), both atomically.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from salesfc import band, cpus, distributed, metrics, progress, settings, statistics, trainer_status
from salesfc import model as model_lib
from salesfc.dataset import Ahead, Preprocessor, Split
from salesfc.errors import UserError
from salesfc.tables import TIMESTAMP
from salesfc.workspace import read_json, wait_for_manifest, write_json, write_text

log = logging.getLogger(__name__)

# In units of the row's scale. Small: the loss is nearly absolute error, so the model learns the median of next
# week's sales (what WMAE rewards), not the mean, which right-skewed sales pull upwards. Early stopping and the
# band's quantiles always use it; the median's training loss uses --huber-delta (this by default).
HUBER_DELTA = 0.02
WARMUP_EPOCHS = 1
# With more than one horizon, next week's forecast takes this share of the loss and the later weeks the rest, evenly.
# Measured on full-size data (seed 7, one network, a year of held-out weeks): with a share of 0.5 the 13-week network's
# one-week WMAE was 0.7% above the one-week network's; with 0.25, 7.0% (the later weeks 0-10% better). At an even
# 1/13 (and no one-week head) its holiday fold was 27% worse.
HORIZON_ONE_SHARE = 0.5
# Validation and checkpoints use an exponential moving average of the weights: it smooths the epoch-to-epoch
# noise of a small batch, so early stopping and the saved model depend much less on the seed.
EMA_DECAY = 0.998
MIN_STEPS_PER_EPOCH = 32  # small data: a smaller batch rather than an epoch of 3 steps
LOSS_SUMS = 2       # weighted loss, weight
DROPOUT_SEED_STRIDE = 1_000_003  # rank r > 0 draws dropout masks from seed + r x this
SHUFFLE_SEED_STRIDE = 7_919      # and shuffles its rows with seed + r x this


def quantile_loss(prediction: torch.Tensor, target: torch.Tensor, q: float,
                  delta: float = HUBER_DELTA) -> torch.Tensor:
    """Per-row loss of the q-th quantile forecast: the pinball loss (q x the shortfall, 1 - q x the excess) made
    smooth near 0 the way Huber makes absolute error smooth, with the same delta; at q = 0.5 it is the Huber loss
    (with HUBER_DELTA: what early stopping scores). Same scale for every quantile: plain pinball terms are 1/delta
    times larger than Huber's."""
    target = target.expand_as(prediction)
    huber = torch.nn.functional.huber_loss(prediction, target, reduction="none", delta=delta)
    if q == 0.5:
        return huber
    return 2 * torch.where(target >= prediction, q, 1 - q) * huber


def training_loss(prediction: torch.Tensor, target: torch.Tensor, q: float = 0.5,
                  median_delta: float = HUBER_DELTA) -> torch.Tensor:
    """Per-row training loss of the q-th quantile forecast: the median's Huber loss with ``median_delta``
    (--huber-delta: a wider one is squared error for more of the errors, which learns from their size, not only
    their sign), the band's as quantile_loss (its terms reach only the band's own layers: model.Member.forward)."""
    return quantile_loss(prediction, target, q, median_delta if q == 0.5 else HUBER_DELTA)


@torch.no_grad()
def calibrate_band(path, arrays: dict, context: distributed.Context | None = None) -> dict:
    """Widen the saved model's quantile band until it holds its nominal share of the validation weeks (salesfc.band):
    the validation weeks played no part in fitting, only in early stopping, so their errors are honest. Each horizon
    is widened on its own: errors grow with the weeks ahead. Every rank scores its own validation rows; rank 0 saves
    the widened model."""
    context = context or distributed.alone()
    network, checkpoint = model_lib.load(path)
    quantiles = network.quantiles
    nominal = quantiles[-1] - quantiles[0]
    numeric, categories, days = (arrays[f"val_{name}"].cpu() for name in ("numeric", "categories", "days"))
    target = arrays["val_target"].cpu().double()
    counted = (arrays["val_weight"].cpu() > 0).numpy()
    bands = torch.cat([network(numeric[i:i + 65_536], categories[i:i + 65_536], days[i:i + 65_536], quantiles=True)
                       for i in range(0, len(target), 65_536)]
                      or [torch.zeros(0, network.horizon, len(quantiles))]).double()
    outside = band.outside(bands[..., 0].numpy(), bands[..., -1].numpy(), target.numpy())
    widen, before, after, total = [], 0.0, 0.0, 0
    for h in range(network.horizon):
        scores = outside[counted[:, h], h]
        rows = int(context.sum_array([len(scores)])[0])
        if not rows:
            raise UserError(f"no validation week is {h + 1} weeks after an origin: --val-weeks must be at least 1")
        widen.append(max(0.0, statistics.quantile(context, scores, band.conformal_level(rows, nominal))))
        inside = context.sum_array([(scores <= 0).sum(), (scores <= widen[-1]).sum()])
        before, after, total = before + inside[0], after + inside[1], total + rows
    result = {"nominal": round(nominal, 6), "widen": widen, "validation_rows": total,
              "validation_coverage_before": float(before / total), "validation_coverage_after": float(after / total)}
    if context.is_main:
        set_band(path, widen, checkpoint)
        log.info("quantile band: %.1f%% of the validation actuals inside before, %.1f%% after widening by %s x "
                 "scale (nominal %.0f%%)", 100 * result["validation_coverage_before"],
                 100 * result["validation_coverage_after"], ", ".join(f"{w:.4f}" for w in widen), 100 * nominal)
    context.barrier()
    return result


def set_band(path, widen: list[float], checkpoint: dict | None = None) -> None:
    """Save the model at ``path`` with its quantile band widened by ``widen`` (per horizon, x the row's scale)."""
    checkpoint = checkpoint if checkpoint is not None else model_lib.load(path)[1]
    model_lib.save(path, {**checkpoint, "MODEL_CONFIG": {**checkpoint["MODEL_CONFIG"], "band_widen": widen}})


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")


def run(config) -> int:
    nproc = config.nproc_per_node or 1
    if nproc > 1 and not distributed.under_torchrun():
        return launch(config, nproc)
    return train(config)


def launch(config, nproc: int) -> int:
    """Start torchrun with ``nproc`` local workers, passing this command's settings on as flags."""
    values = config.values()
    values["run_id"] = config.run_id or new_run_id()  # every worker must write the same run
    values["nproc_per_node"] = 1
    # --local-addr: workers on this machine meet on the loopback address. Without it torchrun advertises the
    # hostname, and where that does not resolve (containers without an /etc/hosts entry) they wait 5 minutes.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
               f"--nproc-per-node={nproc}", "-m", "salesfc", "train", *settings.as_flags(values, "train")]
    log.info("starting %d training processes: torchrun --nproc-per-node=%d -m salesfc train", nproc, nproc)
    env = dict(os.environ)
    # torchrun would set 1 thread per process (and say so); share this container's CPUs between them instead.
    env.setdefault("OMP_NUM_THREADS", str(cpus.threads_per_process(nproc)))
    return subprocess.call(command, env=env)


def make_optimizer(network: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, with its fused kernel where this torch has one for the device (one kernel instead of a dozen per step)."""
    try:
        return torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)


class Trainer:
    def __init__(self, config, context: distributed.Context, run_dir, arrays: dict, meta: dict,
                 epochs: int | None = None):
        """``epochs``: a refit's, which trains exactly that many epochs of the ``config.epochs`` schedule on arrays
        without validation weeks and keeps the last; None: early stopping on the validation weeks."""
        self.config, self.context, self.run_dir, self.meta = config, context, run_dir, meta
        self.refit_epochs = epochs
        self.last_epoch = config.epochs if epochs is None else min(epochs, config.epochs)
        self.device = context.device
        torch.manual_seed(config.seed)
        self.model_config = meta["model_config"]
        network = model_lib.build(self.model_config).to(self.device)
        # The graph is the same at every step: DDP can skip its per-step search for unused parameters, and
        # gradients can live in its all-reduce buckets instead of being copied into them.
        self.network = (DistributedDataParallel(network, static_graph=True, gradient_as_bucket_view=True)
                        if context.distributed else network)
        self.raw_network = network
        if context.rank:
            # Every rank built the same weights from the same seed, which left them the same random stream too: each
            # would drop the same units. Rank 0 keeps its stream, so a one-process run is unchanged.
            torch.manual_seed(config.seed + DROPOUT_SEED_STRIDE * context.rank)
        self.average = model_lib.build(self.model_config).to(self.device)
        self.average.load_state_dict(network.state_dict())
        self.average.requires_grad_(False)
        self.average_steps = 0
        self.optimizer = make_optimizer(network, config.lr, config.weight_decay)
        self.arrays = arrays
        # Each rank trains on its own series. An epoch is as many steps as the smallest shard holds (every rank must
        # take part in every step's all-reduce); the larger shards draw that many of their rows afresh each epoch.
        self.train_rows = int(arrays["train_numeric"].shape[0])
        per_rank_rows = int(context.all_reduce_min(self.train_rows))
        if per_rank_rows == 0:
            raise UserError(f"a training process has no training rows: {context.world_size} processes share too few "
                            "series; train with fewer processes (--nproc-per-node, the TrainJob's nodes) or more data")
        self.per_rank_batch = max(1, min(config.batch_size // context.world_size,
                                         per_rank_rows // MIN_STEPS_PER_EPOCH))
        self.steps_per_epoch = max(1, per_rank_rows // self.per_rank_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        # Linear warm-up over the first epoch (lr x (step + 1) / warmup), then a cosine down to 0 at the last step.
        warmup = WARMUP_EPOCHS * self.steps_per_epoch
        self.scheduler = SequentialLR(self.optimizer, [
            LinearLR(self.optimizer, start_factor=1 / warmup, total_iters=max(1, warmup - 1)),
            CosineAnnealingLR(self.optimizer, T_max=max(1, self.total_steps - warmup))], milestones=[warmup])
        self.last_lr = config.lr
        self.use_amp = config.amp == "on" or (config.amp == "auto" and self.device.type == "cuda")
        horizon = network.horizon
        shares = [1.0] if horizon == 1 else [HORIZON_ONE_SHARE] + [(1 - HORIZON_ONE_SHARE) / (horizon - 1)] * (
            horizon - 1)
        self.horizon_shares = torch.tensor(shares, device=self.device) * horizon  # x horizon: still a mean
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = -1
        self.history: list[dict] = []

    # -- loss ------------------------------------------------------------------------------------------------
    def loss(self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted loss of a (members, batch, horizon) median forecast, or of (members, batch, horizon, Q) quantiles
        (training_loss of each, summed); the mean over members, rows and horizons (a target that does not count has
        weight 0)."""
        prediction = prediction.float()
        weight = weight * self.horizon_shares
        if prediction.dim() == 3:
            return (training_loss(prediction, target, median_delta=self.config.huber_delta) * weight).mean()
        error = sum(training_loss(prediction[..., i], target, q, self.config.huber_delta)
                    for i, q in enumerate(self.raw_network.quantiles))
        return (error * weight).mean()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.use_amp else nullcontext()

    # -- one epoch -------------------------------------------------------------------------------------------
    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's rows for the epoch: a shuffle of its own rows, as many as the epoch's steps take."""
        seed = self.config.seed * 100_003 + epoch + SHUFFLE_SEED_STRIDE * self.context.rank
        order = torch.randperm(self.train_rows, generator=torch.Generator().manual_seed(seed))
        return order[:self.steps_per_epoch * self.per_rank_batch].to(self.device)

    def train_epoch(self, epoch: int, bar: progress.Progress) -> float:
        self.network.train()
        rows = self.shard(epoch)
        # One gather of this rank's shuffled rows per epoch; each step then takes a contiguous slice of it.
        shuffled = {name: self.arrays[f"train_{name}"][rows]
                    for name in ("numeric", "categories", "days", "target", "weight")}
        totals = torch.zeros(LOSS_SUMS, device=self.device)
        for step in range(self.steps_per_epoch):
            batch = {name: values[step * self.per_rank_batch:(step + 1) * self.per_rank_batch]
                     for name, values in shuffled.items()}
            with self.autocast():
                prediction = self.network(batch["numeric"], batch["categories"], batch["days"], per_member=True,
                                          quantiles=len(self.raw_network.quantiles) > 1)
            loss = self.loss(prediction, batch["target"], batch["weight"])
            self.optimizer.zero_grad(set_to_none=True)
            # x members: each member gets the gradient it would get trained alone, and is clipped alone.
            (loss * prediction.shape[0]).backward()
            if self.config.grad_clip:
                for member in self.raw_network.members:
                    torch.nn.utils.clip_grad_norm_(member.parameters(), self.config.grad_clip)
            self.last_lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.update_average()
            totals[0] += loss.detach()
            totals[1] += 1
            bar.update(1)
        totals = self.context.all_reduce_sum(totals)
        return float(totals[0] / totals[1])

    @torch.no_grad()
    def update_average(self) -> None:
        # Short memory at first (small data may only ever take a few hundred steps), EMA_DECAY after that.
        # Not torch.optim.swa_utils.AveragedModel: with a multi_avg_fn doing this same lerp it gives the same numbers
        # but regroups every tensor at every step (default 3-network model, one CPU core, 2026-12-04: 0.37 ms a step
        # against 0.18 ms here; 1.1-1.3 ms with a per-tensor avg_fn), and its "module."-prefixed state would change
        # the checkpoint's format for no gain.
        self.average_steps += 1
        decay = min(EMA_DECAY, (1 + self.average_steps) / (10 + self.average_steps))
        torch._foreach_lerp_(list(self.average.parameters()), list(self.raw_network.parameters()), 1 - decay)

    @torch.no_grad()
    def validate(self) -> dict:
        """Loss and dollar metrics on the validation weeks of every rank's series, identical on every rank."""
        self.average.eval()
        a = self.arrays
        lo, hi = 0, a["val_numeric"].shape[0]  # this rank's own validation rows; the sums are reduced below
        loss_sum = torch.zeros(LOSS_SUMS, device=self.device, dtype=torch.float64)
        parts = []
        for start in range(lo, hi, 65_536):
            end = min(hi, start + 65_536)
            with self.autocast():
                prediction = self.average(a["val_numeric"][start:end], a["val_categories"][start:end],
                                          a["val_days"][start:end]).float()
            weight = a["val_weight"][start:end]
            error = quantile_loss(prediction, a["val_target"][start:end], 0.5)
            loss_sum[0] += (error * weight * self.horizon_shares).sum().double()
            counted = weight > 0  # the (row, horizon) targets in the validation weeks
            loss_sum[1] += counted.sum()
            scale = a["val_scale"][start:end]
            dollars = (prediction.double() * scale)[counted]
            actual = (a["val_target"][start:end].double() * scale)[counted]
            parts.append(metrics.sums(actual.cpu().numpy(), dollars.cpu().numpy(),
                                      a["val_holiday"][start:end][counted].cpu().numpy()))
        local = np.sum(parts, axis=0) if parts else np.zeros(9)
        sums = self.context.all_reduce_sum(torch.cat([loss_sum, torch.tensor(local, device=self.device)]))
        result = metrics.finish(sums[LOSS_SUMS:].cpu().numpy())
        result["loss"] = float(sums[0] / sums[1])
        return result

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        """MODEL_STATE is the averaged network (the one validated); TRAIN_STATE the raw one, for resuming."""
        return {"MODEL_STATE": self.average.state_dict(), "TRAIN_STATE": self.raw_network.state_dict(),
                "OPTIMIZER_STATE": self.optimizer.state_dict(), "SCHEDULER_STATE": self.scheduler.state_dict(),
                "EPOCH": epoch, "VAL_LOSS": self.best_loss, "BEST_EPOCH": self.best_epoch,
                "MODEL_CONFIG": self.model_config, "HISTORY": self.history, "RUN": self.meta["run"]}

    def resume(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        found = self.context.agree(path.exists())
        if not found:
            return
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        if checkpoint["MODEL_CONFIG"] != self.model_config or checkpoint.get("RUN") != self.meta["run"]:
            raise UserError(f"{path} was written with other settings; use a new --run-id or delete {self.run_dir}")
        self.raw_network.load_state_dict(checkpoint["TRAIN_STATE"])
        self.average.load_state_dict(checkpoint["MODEL_STATE"])
        self.optimizer.load_state_dict(checkpoint["OPTIMIZER_STATE"])
        self.epoch = checkpoint["EPOCH"] + 1
        if "SCHEDULER_STATE" in checkpoint:
            self.scheduler.load_state_dict(checkpoint["SCHEDULER_STATE"])
        else:  # written before the schedule was saved: replay it to where the run stopped
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                for _ in range(self.epoch * self.steps_per_epoch):
                    self.scheduler.step()
        self.average_steps = self.epoch * self.steps_per_epoch
        self.best_loss, self.best_epoch = checkpoint["VAL_LOSS"], checkpoint["BEST_EPOCH"]
        self.history = list(checkpoint["HISTORY"])
        if self.context.is_main:
            log.info("resuming %s from epoch %d (best validation loss %.4f at epoch %d)", self.run_dir.name,
                     self.epoch + 1, self.best_loss, self.best_epoch + 1)

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.resume()
        # Rank 0 alone reports: a bar on a terminal; in a log the epoch lines below are the progress (an epoch takes
        # seconds), so no extra lines between them.
        name = self.run_dir.name if self.refit_epochs is None else f"{self.run_dir.name} (refit)"
        with progress.stage(f"training {name}", total=self.steps_per_epoch * self.last_epoch,
                            initial=self.epoch * self.steps_per_epoch, enabled=self.context.is_main,
                            log_every=math.inf) as bar:
            return self._fit(bar)

    def _fit(self, bar: progress.Progress) -> dict:
        started = time.perf_counter()
        samples = 0
        status = trainer_status.Reporter(self.context.is_main, self.last_epoch, first_epoch=self.epoch)
        refit = self.refit_epochs is not None
        for epoch in range(self.epoch, self.last_epoch):
            tick = time.perf_counter()
            train_loss = self.train_epoch(epoch, bar)
            # The slowest rank's time: every rank waits for it at each step's all-reduce, so the throughput of all
            # ranks together is their samples over it.
            seconds = self.context.all_reduce_max(time.perf_counter() - tick)
            epoch_samples = self.steps_per_epoch * self.per_rank_batch * self.context.world_size
            samples += epoch_samples
            record = {"epoch": epoch + 1, "train_loss": train_loss}
            if refit:  # no validation weeks: the epoch was chosen before, the last one is the model
                improved = epoch == self.last_epoch - 1
                if improved:
                    self.best_epoch = epoch
            else:
                val = self.validate()
                improved = val["loss"] < self.best_loss
                if improved:
                    self.best_loss, self.best_epoch = val["loss"], epoch
                record.update({"val_loss": val["loss"], "val_rmse": val["rmse"], "val_wmae": val["wmae"],
                               "val_mape": val["mape"]})
            record.update({"seconds": round(seconds, 3), "lr": self.last_lr})
            self.history.append(record)
            if self.context.is_main:
                # Once, from rank 0: losses and metrics are all-reduced, so every rank would log the same line.
                scores = ("(refit on the training and validation weeks)" if refit else
                          f"val_loss {record['val_loss']:.4f} val_rmse ${record['val_rmse']:,.0f} val_wmae "
                          f"${record['val_wmae']:,.0f} val_mape {record['val_mape']:.2f}%")
                message = (f"epoch {epoch + 1}/{self.last_epoch} train_loss {train_loss:.4f} {scores} lr "
                           f"{record['lr']:.2e} {seconds:.1f}s ({epoch_samples / seconds:,.0f} samples/s on "
                           f"{self.context.world_size} process{'es' if self.context.world_size > 1 else ''})"
                           f"{' *' if improved and not refit else ''}")
                log.info(message)  # above the bar on a terminal (progress redirects console logging)
                if improved:
                    model_lib.save(self.run_dir / "model.pt", self.state(epoch))
                model_lib.save(self.run_dir / "checkpoint.pt", self.state(epoch))
                status.epoch_done(record, self.best_epoch + 1)
            stop = not refit and epoch - self.best_epoch >= self.config.patience
            if self.context.agree(stop):
                if self.context.is_main:
                    log.info("early stopping: no better validation loss for %d epochs", self.config.patience)
                break
        elapsed = time.perf_counter() - started
        if self.history:
            status.finished(self.history[-1], self.best_epoch + 1)
        return {"best_epoch": self.best_epoch + 1, "best_val_loss": self.best_loss, "epochs_run": len(self.history),
                "train_seconds": round(elapsed, 2), "samples_per_second": round(samples / elapsed) if elapsed else None}


def load_training_frame(config, manifest: dict, context: distributed.Context | None = None
                        ) -> tuple[pd.DataFrame, Split, dict]:
    """This rank's shard of the weeks before the held-out ones (its own series) through Feast, the split and what
    the read took. The held-out weeks are never read."""
    from salesfc import feature_store

    context = context or distributed.alone()
    store = feature_store.open_store(config)
    # The split comes first, from the weeks of every label (not the rank's own series): the held-out weeks are then
    # never read.
    counts = feature_store.label_counts(store)
    split = Split.from_weeks(pd.Series(counts.index), config.val_weeks, config.test_weeks)
    tick = time.perf_counter()
    reads = feature_store.reads_per_shard(feature_store.rows_in_weeks(counts, until=split.test_start),
                                          context.world_size, config.rows_per_read)
    with progress.stage(f"reading the training set through Feast ({store.location.engine} offline store)",
                        total=reads, unit="read", enabled=context.is_main) as bar:
        frame = feature_store.shard_features(store, context.rank, context.world_size, reads, on_read=bar.update,
                                             until=split.test_start)
    retrieval_seconds = context.all_reduce_max(time.perf_counter() - tick)
    current = read_json(config.workspace.manifest) if config.workspace.manifest.exists() else None
    if not context.agree(current is not None and current["fingerprint"] == manifest["fingerprint"]):
        raise UserError("the prepared data changed while it was being read (prep ran again); run train again")
    test_rows = feature_store.rows_in_weeks(counts, since=split.test_start)
    read_rows = int(context.sum_array([len(frame)])[0])
    if context.is_main:
        log.info("read %d training and validation rows through Feast (%s offline store) in %.1f s, %s; the %d "
                 "held-out rows are not read", read_rows, store.location.engine, retrieval_seconds,
                 f"{context.world_size} processes each their own series" if context.distributed else "one process",
                 test_rows)
    info = {"retrieval_seconds": round(retrieval_seconds, 2), "offline_store": store.location.engine,
            "rows": {"test": test_rows}}
    return frame, split, info


def load_training_arrays(config, manifest: dict, context: distributed.Context | None = None
                         ) -> tuple[dict, dict, Preprocessor, Split]:
    """This rank's shard of the training set (load_training_frame) as the network's arrays (training_arrays),
    preprocessed with statistics reduced over every rank. Returns numpy arrays and metadata, the same metadata on
    every rank."""
    context = context or distributed.alone()
    frame, split, info = load_training_frame(config, manifest, context)
    arrays, preprocessor, rows = training_arrays(frame, split, context, config.horizon)
    return arrays, {**info, "rows": {**rows, **info["rows"]}}, preprocessor, split


def training_arrays(frame, split: Split, context: distributed.Context | None = None, horizon: int = 1
                    ) -> tuple[dict, Preprocessor, dict]:
    """The training and validation weeks of ``frame`` as the network's arrays, preprocessing fitted on training
    weeks only (on every rank's rows, with a distributed ``context``). Weeks from ``split.test_start`` on are not
    read at all. The row counts are those of all ranks.

    Each row is an origin whose targets are its own week and the ``horizon`` - 1 weeks after it (sales features end
    the week before its own). A target belongs to the part of the split its week is in, whatever the origin's: a
    training row's targets stop before the validation weeks, and the validation weeks are also forecast from origins
    up to ``horizon`` - 1 weeks before them, as a forecast of them would be. Arrays: numeric, categories, days (the
    row's week), target and weight (rows, horizon), weight 0 for a target outside the part or not reported."""
    context = context or distributed.alone()
    part = split.part(frame[TIMESTAMP])
    preprocessor = Preprocessor.fit(frame[part == 0], context)
    ahead = Ahead.of(frame, horizon)
    target_part = split.part_of_days(ahead.target_days)
    arrays = {}
    for name, code in (("train", 0), ("val", 1)):
        keep = ahead.found & (target_part == code)
        chosen = keep.any(axis=1)
        rows = frame[chosen]
        batch = preprocessor.transform(rows)
        scales = preprocessor.horizon_scales(rows, ahead.days[chosen], horizon)
        target, weight = preprocessor.horizon_targets(ahead.rows(chosen), scales, keep[chosen])
        arrays.update({f"{name}_numeric": batch.numeric, f"{name}_categories": batch.categories,
                       f"{name}_days": ahead.days[chosen], f"{name}_target": target, f"{name}_weight": weight})
        if name == "val":
            arrays["val_scale"] = scales
            arrays["val_holiday"] = ahead.holiday[chosen]
    counts = context.sum_array([(part == code).sum() for code in range(3)])
    return arrays, preprocessor, dict(zip(("train", "val", "test"), (int(c) for c in counts)))


def on_device(context: distributed.Context, arrays: dict) -> dict:
    """This rank's numpy arrays as tensors on its device (shared with numpy on the CPU, not copied)."""
    return {name: torch.from_numpy(np.ascontiguousarray(values)).to(context.device)
            for name, values in arrays.items()}


def train(config) -> int:
    manifest = wait_for_manifest(config.workspace, config.data_id, config.wait_timeout)
    context = distributed.setup(config.device)
    try:
        return _train(config, context, manifest)
    finally:
        distributed.teardown(context)


def _train(config, context: distributed.Context, manifest: dict) -> int:
    workspace = config.workspace
    run_id = context.broadcast_json(config.run_id or new_run_id())  # rank 0's clock names the run
    run_dir = workspace.run_dir(run_id)
    if context.agree((run_dir / "training.json").exists()):
        log.info("run %s has already finished training (%s); nothing to do", run_id, run_dir / "training.json")
        return 0
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # No name here holds the frame: fit_model lets it go once it has the arrays, unless a refit needs it again.
    summary = fit_model(config, context, run_dir, *load_training_frame(config, manifest, context),
                        manifest["fingerprint"])
    if context.is_main:
        write_text(workspace.models / "LATEST", run_id + "\n")
        best = summary["history"][summary["best_epoch"] - 1]
        print(f"train: run {run_id} finished: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
              f"validation WMAE ${best['val_wmae']:,.0f}, MAPE {best['val_mape']:.2f}%"
              f"{'; refitted on the training and validation weeks' if 'refit' in summary else ''}; "
              f"{summary['samples_per_second']:,} samples/s on {context.world_size} x {context.device}")
        print(f"train: model {run_dir / 'model.pt'}")
    context.barrier()
    return 0


def run_settings(config) -> dict:
    """The settings that shape a trained model (what a resumed or reused run must have been trained with)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.values().items()
            if k in {s.name for s in settings.for_command("train")}
            and k not in {"workdir", "feature_repo", "wait_timeout", "log_level", "nproc_per_node", "run_id",
                          "data_id", "rows_per_read"}}


def fit_run(config, context: distributed.Context, run_dir, prepared, data: str, selection: dict | None = None
            ) -> dict | None:
    """Train one run into ``run_dir`` (model.pt, checkpoint.pt, preprocess.json, training.json) from each rank's
    ``prepared`` = (arrays, info, preprocessor, split): the rank's own rows, the preprocessing and metadata every
    rank shares. Returns the summary on rank 0. Shared by `train` (the deployed model) and `backtest` (one run per
    fold). With ``selection``, the summary of an early-stopped run, this is its refit: as many epochs as its best,
    on arrays without validation weeks, and its quantile band (see fit_model)."""
    started = time.perf_counter()
    arrays, info, preprocessor, split = prepared
    meta = None
    if context.is_main:
        model_config = model_lib.model_config(preprocessor.n_numeric, preprocessor.cardinalities,
                                              config.embed_dim, config.hidden, config.dropout, config.members,
                                              config.quantiles, config.horizon)
        meta = {"model_config": model_config, "split": split.to_json(), "info": info,
                "run": {"data": data, "settings": run_settings(config), "world_size": context.world_size,
                        "refit_epochs": selection["best_epoch"] if selection else None}}
        write_json(run_dir / "preprocess.json", {**preprocessor.params, "split": split.to_json(), "data": data,
                                                 "refit": selection is not None})
    meta = context.broadcast_json(meta)
    shared = on_device(context, arrays)
    trainer = Trainer(config, context, run_dir, shared, meta, epochs=meta["run"]["refit_epochs"])
    if context.is_main:
        log.info("training %s%s: %d train rows, %d validation rows, %d processes on %s, batch %d per process, %d "
                 "steps per epoch", run_dir.name, " (refit)" if selection else "", info["rows"]["train"],
                 info["rows"]["val"], context.world_size, context.device, trainer.per_rank_batch,
                 trainer.steps_per_epoch)
    result = trainer.fit()
    if len(meta["model_config"].get("quantiles", [0.5])) > 1:
        context.barrier()  # rank 0 has written the best epoch's model.pt, which every rank now reads
        if selection is None:
            result["band"] = calibrate_band(run_dir / "model.pt", shared, context)
        else:  # the refit saw the validation weeks: the band's widening is the one measured before it did
            result["band"] = selection["band"]
            if context.is_main:
                set_band(run_dir / "model.pt", selection["band"]["widen"])
            context.barrier()
    if not context.is_main:
        return None
    summary = {"run_id": run_dir.name, "status": "finished", **result, **meta["info"], "split": meta["split"],
               "model_config": meta["model_config"], "settings": meta["run"]["settings"],
               "world_size": context.world_size, "device": str(context.device),
               "flops_per_sample": model_lib.flops_per_sample(meta["model_config"]),
               "history": trainer.history, "total_seconds": round(time.perf_counter() - started, 2)}
    if selection is not None:
        # The validation curve and the chosen epoch are the early-stopped run's; the refit's own epochs beside them.
        summary.update({
            "history": selection["history"], "best_val_loss": selection["best_val_loss"],
            "epochs_run": selection["epochs_run"], "rows": selection["rows"],
            "train_seconds": round(selection["train_seconds"] + result["train_seconds"], 2),
            "refit": {"epochs": result["best_epoch"], "rows": info["rows"], "history": trainer.history,
                      "train_seconds": result["train_seconds"],
                      "samples_per_second": result["samples_per_second"]}})
    write_json(run_dir / "training.json", summary)
    return summary


SELECTION_DIR = "selection"


def fit_model(config, context: distributed.Context, run_dir, frame: pd.DataFrame, split: Split, info: dict,
              data: str) -> dict | None:
    """The run's model from this rank's ``frame`` (the weeks before the held-out ones): fit_run on the split's
    training weeks, early-stopped on its validation weeks. With ``--refit on``, that run goes to
    ``<run_dir>/selection/`` and only chooses: the model in ``run_dir`` is trained again from scratch on every week
    before the held-out ones, preprocessing refitted on them too, for the epochs the early-stopped run chose, and
    takes its quantile band. The validation weeks are the latest ones (before a backtest fold from November, the
    first markdowns; before one from February, the whole holiday season): without a refit the model never trains
    on them. Returns the summary on rank 0."""
    arrays, preprocessor, rows = training_arrays(frame, split, context, config.horizon)
    info = {**info, "rows": {**rows, **info.get("rows", {})}}
    if config.refit == "off":
        del frame
        return fit_run(config, context, run_dir, (arrays, info, preprocessor, split), data)
    chosen_dir = run_dir / SELECTION_DIR
    done = chosen_dir / "training.json"
    selection = None
    if context.agree(done.exists()):  # resumed after the selection finished
        selection = read_json(done)
        if selection["settings"] != run_settings(config) or selection["split"] != split.to_json():
            raise UserError(f"{chosen_dir} was trained with other settings or weeks; use a new --run-id or delete "
                            f"{run_dir}")
    else:
        if context.is_main:
            chosen_dir.mkdir(parents=True, exist_ok=True)
        context.barrier()
        selection = fit_run(config, context, chosen_dir, (arrays, info, preprocessor, split), data)
    selection = context.broadcast_json(selection)
    del arrays
    arrays, preprocessor, counts = training_arrays(frame, split.without_validation(), context, config.horizon)
    info = {**info, "rows": {**info["rows"], "train": counts["train"], "val": counts["val"]}}  # val: none left
    return fit_run(config, context, run_dir, (arrays, info, preprocessor, split), data, selection)
