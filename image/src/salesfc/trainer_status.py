"""Training progress on the TrainJob itself: ``status.trainerStatus`` (progress, time left, validation metrics).

Kubeflow Trainer v2.3 with its TrainJobStatus feature gate runs a status server and gives every trainer container
its address, CA and a token (KUBEFLOW_TRAINER_SERVER_URL, ..._CA_CERT, ..._TOKEN); the Kubeflow SDK's
``update_trainjob_status`` posts to it. Older Trainers, or the gate off, give no address: then nothing is sent and
rank 0 says so once. Only rank 0 reports: every rank has the same all-reduced metrics.
"""

from __future__ import annotations

import logging
import math
import os
import time

log = logging.getLogger(__name__)

SERVER_URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
# The Trainer's torch plugin sets it in every TrainJob, whatever the version: how rank 0 knows it runs in one.
IN_TRAINJOB_ENV = "PET_NNODES"
# Between two updates: enough for `kubectl get` and a notebook, little for the controller (one API write each).
INTERVAL_SECONDS = 30.0
# The SDK drops, and does not send, any update within 5 s of the one before.
SDK_MIN_INTERVAL_SECONDS = 5.0


class Reporter:
    """Reports after each epoch (at most every INTERVAL_SECONDS) and once at the end."""

    def __init__(self, enabled: bool, epochs: int, first_epoch: int = 0):
        self.epochs, self.first_epoch = epochs, first_epoch
        self.started = time.monotonic()
        self.last_sent = -math.inf
        self.refused = False
        self.update = None
        if not enabled:
            return
        if os.environ.get(SERVER_URL_ENV):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's pydantic models, at import
                from kubeflow.trainer import update_trainjob_status

            self.update = update_trainjob_status
            log.info("reporting progress on the TrainJob's status (status.trainerStatus) every %.0f s",
                     INTERVAL_SECONDS)
        elif IN_TRAINJOB_ENV in os.environ:
            log.info("progress is not reported on the TrainJob's status: no %s (a Trainer before v2.3, or its "
                     "TrainJobStatus feature gate off); it is in this log only", SERVER_URL_ENV)

    def epoch_done(self, record: dict, best_epoch: int) -> bool:
        """After epoch ``record['epoch']`` (1-based) of ``self.epochs``."""
        if self.update is None or time.monotonic() - self.last_sent < INTERVAL_SECONDS:
            return False
        done = record["epoch"]
        per_epoch = (time.monotonic() - self.started) / max(1, done - self.first_epoch)
        # An upper bound: early stopping may end training sooner.
        left = per_epoch * (self.epochs - done)
        return self._send(100 * done // self.epochs, left, record, best_epoch)

    def finished(self, record: dict, best_epoch: int) -> bool:
        if self.update is None:
            return False
        # The last word must not be dropped by the SDK's throttle.
        time.sleep(max(0.0, SDK_MIN_INTERVAL_SECONDS - (time.monotonic() - self.last_sent)))
        return self._send(100, 0, record, best_epoch)

    def _send(self, percent: int, seconds_left: float, record: dict, best_epoch: int) -> bool:
        metrics = {"epoch": f"{record['epoch']}/{self.epochs}", "best_epoch": best_epoch,
                   "train_loss": f"{record['train_loss']:.5f}"}
        if "val_loss" in record:  # a refit (--refit on) has no validation weeks
            metrics.update({"val_loss": f"{record['val_loss']:.5f}", "val_wmae": f"{record['val_wmae']:.2f}"})
        sent = self.update(progress_percent=int(percent), estimated_remaining_seconds=int(round(seconds_left)),
                           metrics=metrics)
        if sent:
            self.last_sent = time.monotonic()
        elif not self.refused:
            self.refused = True
            log.warning("the Trainer's status server did not take the progress update (no token in "
                        "KUBEFLOW_TRAINER_SERVER_TOKEN's file, or the kubeflow warning above says why); training goes "
                        "on, progress stays in this log")
        return sent
