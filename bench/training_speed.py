"""Training speed: salesfc's training loop against two DataLoader loops, and against the machine's limit for the
same work.

Both loops train the same network (salesfc.model, default sizes) at the same global batch size on the same
full-size training rows (read through Feast once, as `salesfc train` does), with the same loss, AdamW and
gradient clipping, as 1 and 2 DDP processes (gloo on CPU). Two references:

* the plain loop, what the seed design did: a Dataset returning one row at a time, a DataLoader collating each batch
  from its rows with the default collation, a DistributedSampler sharding them. Python per row: a weak reference.
* the batched loop, what a careful PyTorch user would write: the same DataLoader and DistributedSampler, but the
  sampler's indices grouped by a BatchSampler and each batch taken from the tensors by one indexing operation
  (``batch_size=None``, no collation). The stronger reference: it differs from salesfc's loop only in the DataLoader
  machinery and in copying batches from host memory.

The limit: the network's forward+backward FLOPs per sample (3 x 2 x its multiply-adds) against the FLOP/s of a
plain float32 matrix product measured in this run on the same cores, so samples/s x FLOPs/sample / that FLOP/s
is the fraction of the machine the loop uses.

The cost of horizons: salesfc's loop on one process with the one-week network and with a 13-week one (the
default; ``--horizons 1,13``: the same origin rows, each with 13 targets and the decoder of salesfc.model; both
forecast the median only, as do the loops above), seconds per epoch side by side.

    python bench/training_speed.py                      # CPU: 1 and 2 processes
    python bench/training_speed.py --device cuda --epochs 10 --procs 1     # the GPU figure (10 epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, prepared, table  # noqa: E402

from salesfc import distributed, progress, settings, train  # noqa: E402
from salesfc import model as model_lib  # noqa: E402
from salesfc.workspace import read_json  # noqa: E402

ARRAYS = ("train_numeric", "train_categories", "train_days", "train_target", "train_weight")
ARRAYS_FORMAT = 2  # the cache's layout: 2 = targets (rows, horizon) and the rows' days


def train_config(**changes) -> settings.Config:
    return settings.Config.defaults("train", **changes)


def training_arrays(workdir: Path, horizon: int = 1) -> tuple[Path, dict]:
    """The full-size training arrays, as `salesfc train --horizon H` prepares them, cached as .npy files."""
    config = train_config(workdir=str(workdir), horizon=horizon)
    manifest = read_json(config.workspace.manifest)
    folder = CACHE / "speed" / f"{manifest['fingerprint'][:16]}-v{ARRAYS_FORMAT}-h{horizon}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        arrays, _, preprocessor, _ = train.load_training_arrays(config, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            np.save(folder / f"{name}.npy", arrays[name])
        model_config = model_lib.model_config(preprocessor.n_numeric, preprocessor.cardinalities, config.embed_dim,
                                              config.hidden, config.dropout, horizon=horizon)
        meta_path.write_text(json.dumps({"model_config": model_config}))
    return folder, json.loads(meta_path.read_text())


# -- the two loops, one process each ---------------------------------------------------------------------------
def salesfc_loop(context, arrays: dict, meta: dict, config, epochs: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = train.Trainer(config, context, Path(run_dir), arrays, {**meta, "run": {}})
        quiet = progress.Progress("bench", enabled=False)
        trainer.train_epoch(0, quiet)  # warm-up: allocator, kernels, DDP buckets
        synchronize(context.device)
        tick = time.perf_counter()
        for epoch in range(1, epochs + 1):
            trainer.train_epoch(epoch, quiet)
        synchronize(context.device)
        seconds = time.perf_counter() - tick
        return epochs * trainer.steps_per_epoch * trainer.per_rank_batch * context.world_size, seconds


class RowDataset(torch.utils.data.Dataset):
    """One training row per __getitem__, as a plain PyTorch Dataset does."""

    def __init__(self, arrays: dict):
        self.arrays = [arrays[name] for name in ARRAYS]

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index: int):
        return tuple(a[index] for a in self.arrays)


def row_loader(host: dict, sampler, batch: int) -> torch.utils.data.DataLoader:
    """The seed's: one row per __getitem__, batches collated from rows by the default collate function."""
    return torch.utils.data.DataLoader(RowDataset(host), batch_size=batch, sampler=sampler,
                                       shuffle=sampler is None, drop_last=True)


def batched_loader(host: dict, sampler, batch: int) -> torch.utils.data.DataLoader:
    """Whole batches: the BatchSampler hands the dataset a list of row numbers, which indexes every tensor at once;
    batch_size=None turns off the DataLoader's own batching and collation."""
    dataset = torch.utils.data.TensorDataset(*(host[name] for name in ARRAYS))
    rows = sampler if sampler is not None else torch.utils.data.RandomSampler(dataset)
    return torch.utils.data.DataLoader(dataset, batch_size=None,
                                       sampler=torch.utils.data.BatchSampler(rows, batch, drop_last=True))


LOADERS = {"plain": row_loader, "batched": batched_loader}


def loader_loop(context, arrays: dict, meta: dict, config, steps: int, kind: str) -> tuple[int, float]:
    """A DataLoader + DistributedSampler loop (``kind``: see LOADERS), same network, loss, optimizer and batch."""
    torch.manual_seed(config.seed)
    network = model_lib.build(meta["model_config"]).to(context.device)
    ddp = torch.nn.parallel.DistributedDataParallel(network) if context.distributed else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    host = {name: arrays[name].cpu() for name in ARRAYS}
    sampler = (torch.utils.data.distributed.DistributedSampler(RowDataset(host), shuffle=True, seed=config.seed)
               if context.distributed else None)
    batch = config.batch_size // context.world_size
    loader = LOADERS[kind](host, sampler, batch)
    use_amp = context.device.type == "cuda" and config.amp != "off"
    warmup, done, tick = 10, 0, None
    ddp.train()
    while done < warmup + steps:
        for numeric, categories, days, target, weight in loader:
            if done == warmup:
                synchronize(context.device)
                tick = time.perf_counter()
            numeric, categories, days = (t.to(context.device) for t in (numeric, categories, days))
            target, weight = target.to(context.device), weight.to(context.device)
            with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=use_amp):
                prediction = ddp(numeric, categories, days)
            loss = (train.training_loss(prediction.float(), target, median_delta=config.huber_delta) * weight).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), config.grad_clip)
            optimizer.step()
            done += 1
            if done == warmup + steps:
                break
    synchronize(context.device)
    return steps * batch * context.world_size, time.perf_counter() - tick


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(rank: int, world: int, port: int, options: dict, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    context = distributed.setup(options["device"])
    try:
        folder = Path(options["arrays"])
        meta = json.loads((folder / "meta.json").read_text())
        meta["model_config"]["dropout"] = options["dropout"]
        arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy")).to(context.device) for name in ARRAYS}
        config = train_config(batch_size=options["batch_size"], device=options["device"])
        if options["loop"] == "salesfc":
            samples, seconds = salesfc_loop(context, arrays, meta, config, options["epochs"])
        else:
            samples, seconds = loader_loop(context, arrays, meta, config, options["plain_steps"], options["loop"])
        if context.is_main:
            Path(out).write_text(json.dumps({"samples": samples, "seconds": seconds}))
    finally:
        distributed.teardown(context)


def measure(loop: str, procs: int, options: dict) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        torch.multiprocessing.spawn(worker, args=(procs, port, {**options, "loop": loop}, out.name), nprocs=procs)
        return json.loads(Path(out.name).read_text())


def matmul_flops(device: torch.device, dtype: torch.dtype, threads: int, size: int = 2048, seconds: float = 2.0):
    """FLOP/s of a plain square matrix product on ``threads`` cores (or the GPU): the machine's limit."""
    torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    n, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
        a @ b
        n += 1
    synchronize(device)
    return 2 * size ** 3 * n / (time.perf_counter() - tick)


def print_loops(results: list[dict], device: str, flops_per_sample: int) -> None:
    print(table([[f"{r['procs']} x {device}", round(r["salesfc"]), round(r["plain"]), round(r["batched"]),
                  f"{r['salesfc'] / r['plain']:.2f}x", f"{r['salesfc'] / r['batched']:.2f}x",
                  f"{r['salesfc'] * flops_per_sample / 1e9:.1f}", f"{r['limit_flops'] / 1e9:.1f}",
                  f"{r['salesfc'] / r['limit_samples']:.0%}"] for r in results],
                ["processes", "salesfc samples/s", "plain samples/s", "batched samples/s", "vs plain", "vs batched",
                 "salesfc GFLOP/s", "matmul GFLOP/s", "of limit"]))
    print("plain: a per-row Dataset with the default collation (the seed's loop, a weak reference); batched: the same "
          "DataLoader handing out whole batches by tensor indexing (the stronger reference)")
    print("goal on CPU: >= 1.5x the plain loop and >= 50% of the limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--procs", default="1,2", help="process counts to measure, comma-separated")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs of salesfc's loop (after one warm-up)")
    parser.add_argument("--plain-steps", type=int, default=150,
                        help="timed steps of each DataLoader loop (after 10)")
    parser.add_argument("--batch-size", type=int, default=train_config().batch_size)
    parser.add_argument("--dropout", type=float, default=train_config().dropout)
    parser.add_argument("--horizons", default="1,13", help="horizons whose epoch cost is compared (one process; "
                        "empty: none)")
    args = parser.parse_args()

    workdir = prepared("full")
    folder, meta = training_arrays(workdir)
    flops_per_sample = model_lib.flops_per_sample(meta["model_config"])
    rows = np.load(folder / "train_target.npy", mmap_mode="r").shape[0]
    options = {"device": args.device, "arrays": str(folder), "epochs": args.epochs, "plain_steps": args.plain_steps,
               "batch_size": args.batch_size, "dropout": args.dropout}
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cores = os.cpu_count() or 1
    print(f"training speed on {machine()}")
    print(f"{rows:,} full-size training rows; network {meta['model_config']['hidden']} + embeddings, "
          f"{flops_per_sample:,} FLOPs per sample (forward+backward); global batch {args.batch_size}, dropout "
          f"{args.dropout:g}")
    results = []
    for procs in [int(p) for p in args.procs.split(",") if p.strip()]:
        limit = matmul_flops(device, dtype, max(1, cores // procs) * procs if device.type == "cpu" else 1)
        ours = measure("salesfc", procs, options)
        plain = measure("plain", procs, options)
        batched = measure("batched", procs, options)
        ours_rate, plain_rate = ours["samples"] / ours["seconds"], plain["samples"] / plain["seconds"]
        results.append({"procs": procs, "salesfc": ours_rate, "plain": plain_rate,
                        "batched": batched["samples"] / batched["seconds"], "limit_flops": limit,
                        "limit_samples": limit / flops_per_sample})
        if args.epochs >= 10 or device.type == "cuda":
            print(f"{procs} process(es): salesfc {args.epochs} epochs in {ours['seconds']:.2f} s; the plain loop "
                  f"would take {args.epochs * rows / plain_rate:.1f} s (at its measured rate)")
    if results:
        print_loops(results, args.device, flops_per_sample)
    horizons = [int(h) for h in args.horizons.split(",") if h.strip()]
    if horizons:
        costs = []
        for horizon in horizons:
            folder_h, meta_h = training_arrays(workdir, horizon)
            run = measure("salesfc", 1, {**options, "arrays": str(folder_h)})
            costs.append((horizon, run["seconds"] / args.epochs, model_lib.flops_per_sample(meta_h["model_config"])))
        base = costs[0][1]
        print(f"\ncost of the horizon, salesfc's loop on 1 x {args.device}, {rows:,} origin rows per epoch:")
        print(table([[h, f"{seconds:.2f}", f"{seconds / base:.2f}x", f"{flops:,}"] for h, seconds, flops in costs],
                    ["horizon (weeks)", "seconds per epoch", f"vs horizon {costs[0][0]}", "FLOPs per origin row"]))
        print("goal: an epoch at horizon 13 costs < 1.5x one at horizon 1")


if __name__ == "__main__":
    main()
