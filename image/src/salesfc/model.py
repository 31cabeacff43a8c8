"""The forecasting network and its checkpoint format.

An MLP (256-128-64 by default) over the numeric inputs and learned embeddings of store, department, week of year,
store type and holiday; it predicts weekly sales divided by the row's scale (see salesfc.dataset). The network is
an ensemble of ``members`` such MLPs, each with its own initial weights and dropout masks, trained side by side on
the same batches (each on its own loss) and averaged when forecasting: averaging independently trained networks
cancels much of their seed-to-seed variance, which on this data is as large as the differences between
architectures (measured in bench/README.md).

A checkpoint holds MODEL_STATE, OPTIMIZER_STATE, EPOCH, VAL_LOSS and MODEL_CONFIG (enough to rebuild the network)
as tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)``: a model file on a
shared volume is never a way to run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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


class Member(nn.Module):
    def __init__(self, n_numeric: int, cardinalities: list[int], embed_dim: int, hidden: list[int],
                 dropout: float, outputs: int = 1, median: int = 0):
        super().__init__()
        self.median = median
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
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        # The other quantiles: their gaps to the median, read off the last hidden layer.
        self.gaps = nn.Linear(width, outputs - 1) if outputs > 1 else None

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """(batch, outputs): the quantiles in increasing order (one output: the median alone)."""
        features = torch.cat([numeric, self.embedding(categories + self.offsets).flatten(1)], dim=1)
        for layer in self.mlp[:-1]:
            features = layer(features)
        center = self.mlp[-1](features)
        if self.gaps is None:
            return center
        # The band learns from the median's network without pulling on it: its losses reach the gap layer only, so
        # the point forecast is what a median-only network makes (pinball terms in the shared layers cost the
        # median 13% WMAE on the holiday fold of a backtest).
        return ordered_quantiles(center, self.gaps(features.detach()), self.median, anchor=center.detach())


class SalesMLP(nn.Module):
    """The ensemble: ``forward`` returns the members' mean median forecast (batch,); with ``quantiles`` every quantile
    (batch, Q); with ``per_member`` each member's, stacked first ((members, batch) or (members, batch, Q)), which is
    what training fits, one loss per member. Averaging members keeps quantiles in order: each member's are."""

    def __init__(self, n_numeric: int, cardinalities: list[int], embed_dim: int, hidden: list[int],
                 dropout: float, members: int = 1, quantiles: tuple[float, ...] = (0.5,), band_widen: float = 0.0):
        super().__init__()
        self.quantiles = tuple(quantiles)
        # Set after training from the validation weeks (salesfc.train.calibrate_band): how far the quantiles below
        # and above the median move out, in units of the row's scale.
        self.band_widen = float(band_widen)
        self.median = self.quantiles.index(0.5)
        self.members = nn.ModuleList(Member(n_numeric, cardinalities, embed_dim, hidden, dropout,
                                            len(self.quantiles), self.median) for _ in range(members))

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor, per_member: bool = False,
                quantiles: bool = False) -> torch.Tensor:
        outputs = torch.stack([member(numeric, categories) for member in self.members])
        if not quantiles:
            outputs = outputs[..., self.median]
        elif self.band_widen:
            shift = torch.full((len(self.quantiles),), self.band_widen, dtype=outputs.dtype, device=outputs.device)
            shift[:self.median + 1] *= -1
            shift[self.median] = 0
            outputs = outputs + shift
        return outputs if per_member else outputs.mean(0)


def model_config(n_numeric: int, cardinalities: list[int], embed_dim: int, hidden, dropout: float,
                 members: int = 1, quantiles=(0.5,)) -> dict:
    return {"model_type": "mlp", "n_numeric": int(n_numeric), "cardinalities": [int(c) for c in cardinalities],
            "embed_dim": int(embed_dim), "hidden": [int(h) for h in hidden], "dropout": float(dropout),
            "members": int(members), "quantiles": [float(q) for q in quantiles]}


def build(config: dict) -> SalesMLP:
    if config.get("model_type") != "mlp":
        raise ValueError(f"unknown model_type {config.get('model_type')!r}")
    return SalesMLP(config["n_numeric"], config["cardinalities"], config["embed_dim"], config["hidden"],
                    config["dropout"], config.get("members", 1), tuple(config.get("quantiles", (0.5,))),
                    config.get("band_widen", 0.0))


def flops_per_sample(config: dict) -> int:
    """Forward + backward floating-point operations of one sample: 3 x 2 x multiply-adds of the linear layers, of
    every member."""
    width = config["n_numeric"] + config["embed_dim"] * len(config["cardinalities"])
    macs = 0
    for size in [*config["hidden"], len(config.get("quantiles", (0.5,)))]:
        macs += width * size
        width = size
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
