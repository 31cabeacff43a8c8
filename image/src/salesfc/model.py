"""The forecasting network and its checkpoint format.

An MLP (256-128-64 by default) over the numeric inputs and learned embeddings of store, department, week of year,
store type and holiday; it predicts weekly sales divided by the row's scale (see salesfc.dataset). With a horizon H
above 1 it forecasts weeks t+1 ... t+H from one origin (a direct multi-horizon head): next week's forecast is the
one-week head's (the MLP's last layer, as a one-week network has it), and each later week's is that plus a small
decoder's term. Only next week's loss trains the one-week head; the later weeks' losses reach the shared layers
through the decoder, not through the head they add to (see Member.forward). The decoder reads
the last hidden layer once per row (a projection to DECODER_WIDTH) and adds, per target week, a learned vector for the
horizon, one for the target week's week of year and a projection of its distance to Thanksgiving and Christmas (that
calendar is known ahead, looked up from the date: ``calendar_table``), then one ReLU and one output. A row costs one
narrow layer more per horizon, not a network per horizon. The network is
an ensemble of ``members`` such MLPs, each with its own initial weights and dropout masks, trained side by side on
the same batches (each on its own loss) and averaged when forecasting: averaging independently trained networks
cancels much of their seed-to-seed variance, which on this data is as large as the differences between
architectures (measured in bench/README.md).

A checkpoint holds MODEL_STATE, OPTIMIZER_STATE, EPOCH, VAL_LOSS and MODEL_CONFIG (enough to rebuild the network)
as tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)``: a model file on a
shared volume is never a way to run code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from salesfc.tables import EPOCH_DAY
from salesfc.workspace import atomic_path


class Dropout(nn.Module):
    """Dropout that draws its CPU masks from a pool instead of fresh random numbers at every step.

    On CPU, drawing a Bernoulli mask costs ten times the matrix product of the layer it follows (torch's CPU
    random number generator is that slow), so plain dropout halves training speed. Here each step multiplies by
    a window of a pool of masks (POOL_FACTOR times the batch, at a random offset), and the pool is drawn afresh
    every REFRESH_STEPS steps. Rows of a batch are a random sample, so each row still meets a random mask; masks
    repeat only across rows of different batches. On GPUs the native dropout is cheap, and is used.
    """

    POOL_FACTOR = 8
    REFRESH_STEPS = 64

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.pool: torch.Tensor | None = None
        self.uses = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        if x.is_cuda:
            return nn.functional.dropout(x, self.p, True)
        rows = x.shape[0]
        pool = self.pool
        if (pool is None or pool.shape[0] < self.POOL_FACTOR * rows or pool.shape[1:] != x.shape[1:]
                or pool.dtype != x.dtype or self.uses >= self.REFRESH_STEPS):
            keep = torch.rand(self.POOL_FACTOR * rows, *x.shape[1:], device=x.device) >= self.p
            pool = self.pool = keep.to(x.dtype) / (1 - self.p)
            self.uses = 0
        self.uses += 1
        start = int(torch.randint(0, pool.shape[0] - rows + 1, ()))
        return x * pool[start:start + rows]

    def extra_repr(self) -> str:
        return f"p={self.p}"


def ordered_quantiles(center: torch.Tensor, gaps: torch.Tensor, median: int, anchor: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """The median (..., 1) and raw gaps (..., Q - 1) -> (..., Q) quantile forecasts that never cross.

    Each gap's softplus is the distance from one quantile to its neighbour towards the median, so each quantile lies
    below (above) the next one up (down) whatever the weights. The other quantiles hang from ``anchor`` (the median's
    value; detached, it passes their gradients to the gaps alone)."""
    anchor = center if anchor is None else anchor
    gaps = nn.functional.softplus(gaps)
    below = anchor - gaps[..., :median].flip(-1).cumsum(-1).flip(-1)
    above = anchor + gaps[..., median:].cumsum(-1)
    return torch.cat([below, center, above], dim=-1)


CALENDAR_DAYS = 84_000  # 1970-01-01 to 2199: the days calendar_table covers
WEEK_CODES = 54         # ISO weeks 1-53, and 0 for a day outside the table
# Width of the multi-horizon decoder. Its (rows, horizon, width) activations are what a horizon costs: measured on one
# CPU core for the default 3 networks and 2,048 rows, a decoder of 64 took 41 ms a step, about the whole one-week
# network's step, and one of 16 took 9 ms.
DECODER_WIDTH = 16


@dataclass
class TargetCalendar:
    """The calendar of a batch's target weeks, per distinct origin week (a batch of 4,096 rows has one or two hundred):
    for each such origin and horizon the target week's ISO week code and holiday distances, and for each row the index
    of its origin among them. Per origin rather than per target week, so a row's calendar terms for every horizon are
    one contiguous lookup (see Member.forward)."""

    week: torch.Tensor   # long (origins, horizon)
    near: torch.Tensor   # float (origins, horizon, 2)
    index: torch.Tensor  # long (rows,)


@functools.lru_cache(maxsize=1)
def calendar_table() -> tuple[torch.Tensor, torch.Tensor]:
    """For each day since 1970-01-01: its ISO week of year (long) and its weeks to Thanksgiving and to Christmas over
    HOLIDAY_REACH (float, in [-1, 1]). Computed by the functions that make the store context's columns
    (salesfc.features.calendar), so a target week's calendar is what its row would carry."""
    from salesfc.features import HOLIDAY_REACH, calendar

    values = calendar(pd.Series(pd.date_range(EPOCH_DAY.tz_localize(None), periods=CALENDAR_DAYS, freq="D")))
    week = torch.from_numpy(values["week_of_year"].astype(np.int64))
    near = np.stack([values["weeks_to_thanksgiving"], values["weeks_to_christmas"]], axis=1) / HOLIDAY_REACH
    return week, torch.from_numpy(near.astype(np.float32))


class Member(nn.Module):
    def __init__(self, n_numeric: int, cardinalities: list[int], embed_dim: int, hidden: list[int],
                 dropout: float, outputs: int = 1, median: int = 0, horizon: int = 1, next_week_alone: bool = True):
        super().__init__()
        self.median = median
        self.horizon = horizon
        self.next_week_alone = next_week_alone
        # One table for all categories (each one's codes shifted by an offset): one lookup and one backward pass
        # per step instead of one per category, which matters on CPU where each is a separate kernel.
        self.embedding = nn.Embedding(sum(cardinalities), embed_dim)
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        layers: list[nn.Module] = []
        width = n_numeric + embed_dim * len(cardinalities)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(Dropout(dropout))
            width = size
        # One horizon: the last layer is the forecast. More: it is the decoder's projection of the row, to which each
        # target week adds its own terms (one horizon keeps the single-horizon network, and its checkpoints, as is).
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        if horizon > 1:
            # Every horizon's forecast is the one-week head's (the last layer, as one horizon has it) plus the
            # decoder's term for that horizon and target week.
            self.decode = nn.Linear(width, DECODER_WIDTH)
            self.horizon_embedding = nn.Embedding(horizon, DECODER_WIDTH)
            self.week_embedding = nn.Embedding(WEEK_CODES, DECODER_WIDTH)
            self.near = nn.Linear(2, DECODER_WIDTH, bias=False)
            self.out = nn.Linear(DECODER_WIDTH, 1)
        # The other quantiles: their gaps to the median, read off the last hidden layer (the decoder's, per horizon).
        self.gaps = nn.Linear(width if horizon == 1 else DECODER_WIDTH, outputs - 1) if outputs > 1 else None

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor,
                target_calendar: "TargetCalendar | None" = None) -> torch.Tensor:
        """(batch, horizon, outputs): per target week, the quantiles in increasing order (one output: the median)."""
        features = torch.cat([numeric, self.embedding(categories + self.offsets).flatten(1)], dim=1)
        for layer in self.mlp[:-1]:
            features = layer(features)
        base = self.mlp[-1](features).unsqueeze(1)
        if self.horizon == 1:
            features, center = features.unsqueeze(1), base
        else:
            # Each distinct origin's terms for every horizon once (its target weeks' calendar and the horizon's own),
            # then one row of them per row: an embedding lookup, whose backward pass adds whole rows. Gathering each
            # (row, horizon) pair from a table of target weeks instead made an epoch of the default 20% slower (its
            # backward pass sorts and scatters 13 indices a row) and not reproducible: the scatter's order of
            # additions varied from run to run (bench/README.md, Horizons).
            calendar = (self.horizon_embedding.weight + self.week_embedding(target_calendar.week)
                        + self.near(target_calendar.near))
            calendar = nn.functional.embedding(target_calendar.index, calendar.flatten(1)).view(
                -1, self.horizon, DECODER_WIDTH)
            features = torch.relu(self.decode(features).unsqueeze(1) + calendar)
            terms = self.out(features)
            if self.next_week_alone:
                # Next week is the one-week head's forecast alone, and the later weeks add their terms to a copy of it
                # that carries no gradient back: the head learns next week as a one-week network's does, where a head
                # that every horizon pulls on made next week 2-4% worse in the November fold of the 13-week backtests
                # (bench/README.md, Horizons). The later weeks still train the shared layers, through the decoder.
                center = torch.cat([base, base.detach() + terms[:, 1:]], dim=1)
            else:  # models trained before 2026-12-06: every week is the head plus its term
                center = base + terms
        if self.gaps is None:
            return center
        # The band learns from the median's network without pulling on it: its losses reach the gap layer only, so
        # the point forecast is what a median-only network makes (pinball terms in the shared layers cost the
        # median 13% WMAE on the holiday fold of a backtest).
        return ordered_quantiles(center, self.gaps(features.detach()), self.median, anchor=center.detach())


class SalesMLP(nn.Module):
    """The ensemble: ``forward`` returns the members' mean median forecast (batch, horizon); with ``quantiles`` every
    quantile (batch, horizon, Q); with ``per_member`` each member's, stacked first, which is what training fits, one
    loss per member. Averaging members keeps quantiles in order: each member's are. ``days`` is each row's first
    target week (epoch_days), needed above one horizon: target week h is ``days + 7 (h - 1)``."""

    def __init__(self, n_numeric: int, cardinalities: list[int], embed_dim: int, hidden: list[int],
                 dropout: float, members: int = 1, quantiles: tuple[float, ...] = (0.5,),
                 band_widen: float | list[float] = 0.0, horizon: int = 1, next_week_alone: bool = True):
        super().__init__()
        self.quantiles = tuple(quantiles)
        self.horizon = int(horizon)
        # Set after training from the validation weeks (salesfc.train.calibrate_band): how far the quantiles below
        # and above the median move out, in units of the row's scale, per horizon (one number: every horizon).
        widen = [float(band_widen)] * self.horizon if np.isscalar(band_widen) else [float(w) for w in band_widen]
        self.band_widen = widen
        self.median = self.quantiles.index(0.5)
        self.members = nn.ModuleList(Member(n_numeric, cardinalities, embed_dim, hidden, dropout,
                                            len(self.quantiles), self.median, self.horizon, next_week_alone)
                                     for _ in range(members))
        if self.horizon > 1:
            week, near = calendar_table()
            self.register_buffer("calendar_week", week, persistent=False)
            self.register_buffer("calendar_near", near, persistent=False)
            self.register_buffer("steps", 7 * torch.arange(self.horizon), persistent=False)

    def target_calendar(self, days: torch.Tensor) -> TargetCalendar:
        origin, index = torch.unique(days, return_inverse=True)
        day = origin.unsqueeze(1) + self.steps
        inside = (day >= 0) & (day < CALENDAR_DAYS)
        day = day.clamp(0, CALENDAR_DAYS - 1)
        return TargetCalendar(torch.where(inside, self.calendar_week[day], 0),
                              self.calendar_near[day] * inside.unsqueeze(-1), index)

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor, days: torch.Tensor | None = None,
                per_member: bool = False, quantiles: bool = False) -> torch.Tensor:
        target_calendar = None
        if self.horizon > 1:
            if days is None:
                raise ValueError(f"a {self.horizon}-week network needs each row's first target week (days)")
            target_calendar = self.target_calendar(days)
        outputs = torch.stack([member(numeric, categories, target_calendar) for member in self.members])
        if not quantiles:
            outputs = outputs[..., self.median]
        elif any(self.band_widen):
            sign = torch.ones(len(self.quantiles), dtype=outputs.dtype, device=outputs.device)
            sign[:self.median + 1] = -1
            sign[self.median] = 0
            widen = torch.tensor(self.band_widen, dtype=outputs.dtype, device=outputs.device)
            outputs = outputs + widen[:, None] * sign
        return outputs if per_member else outputs.mean(0)


def model_config(n_numeric: int, cardinalities: list[int], embed_dim: int, hidden, dropout: float,
                 members: int = 1, quantiles=(0.5,), horizon: int = 1) -> dict:
    return {"model_type": "mlp", "n_numeric": int(n_numeric), "cardinalities": [int(c) for c in cardinalities],
            "embed_dim": int(embed_dim), "hidden": [int(h) for h in hidden], "dropout": float(dropout),
            "members": int(members), "quantiles": [float(q) for q in quantiles], "horizon": int(horizon),
            "next_week_alone": True}


def build(config: dict) -> SalesMLP:
    if config.get("model_type") != "mlp":
        raise ValueError(f"unknown model_type {config.get('model_type')!r}")
    return SalesMLP(config["n_numeric"], config["cardinalities"], config["embed_dim"], config["hidden"],
                    config["dropout"], config.get("members", 1), tuple(config.get("quantiles", (0.5,))),
                    config.get("band_widen", 0.0), config.get("horizon", 1),
                    # A checkpoint without the key was trained with every week on the shared head: keep its forecasts.
                    config.get("next_week_alone", False))


def flops_per_sample(config: dict) -> int:
    """Forward + backward floating-point operations of one sample (an origin row, every horizon of it): 3 x 2 x
    multiply-adds of the linear layers, of every member."""
    width = config["n_numeric"] + config["embed_dim"] * len(config["cardinalities"])
    horizon = config.get("horizon", 1)
    outputs = len(config.get("quantiles", (0.5,)))
    macs = 0
    for size in config["hidden"]:
        macs += width * size
        width = size
    macs += width * outputs
    if horizon > 1:  # the row's projection, then per horizon the outputs (the calendar's terms: per distinct origin)
        macs += width * DECODER_WIDTH + horizon * DECODER_WIDTH * outputs
    return 6 * macs * config.get("members", 1)


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path, device: str | torch.device = "cpu") -> tuple[SalesMLP, dict]:
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    network = build(checkpoint["MODEL_CONFIG"])
    network.load_state_dict(checkpoint["MODEL_STATE"])
    network.to(device).eval()
    return network, checkpoint
