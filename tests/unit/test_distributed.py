"""Two real gloo processes: the collectives of distributed.Context, and a resumed training run against an
uninterrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from processes import free_port
import torch
import torch.multiprocessing as mp

from salesfc import distributed, features, settings, statistics, tables, train
from salesfc.data import synthetic
from salesfc.dataset import Preprocessor, Split
from salesfc.tables import TIMESTAMP

WORLD = 2


def join_world(rank: int, port: int) -> distributed.Context:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    return distributed.setup("cpu")


def collectives(rank: int, port: int, out: str) -> None:
    context = join_world(rank, port)
    try:
        result = {
            "is_main": context.is_main, "distributed": context.distributed,
            "sum": context.all_reduce_sum(torch.tensor([1.0, 10.0 * (rank + 1)])).tolist(),
            "max": context.all_reduce_max(3.0 + rank),
            "json": context.broadcast_json({"run": "r1", "rows": [1, 2]} if rank == 0 else {"run": "wrong"}),
            "tensor": context.broadcast_tensor(torch.arange(6.0).reshape(2, 3) if rank == 0 else None,
                                               (2, 3), torch.float32).tolist(),
            "all_agree": context.agree(True),
            "one_disagrees": context.agree(rank == 0),
            "min": context.all_reduce_min(3.0 + rank),
            "sum_array": context.sum_array([1, 0.5 * rank]).tolist(),
            "gathered": context.all_gather_json({"rank": rank, "items": list(range(rank * 40))}),
        }
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown(context)


def test_context_collectives_on_two_gloo_processes(tmp_path):
    mp.spawn(collectives, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD)]
    for rank, result in enumerate(results):
        assert result["is_main"] == (rank == 0) and result["distributed"]
        assert result["sum"] == [2.0, 30.0]
        assert result["max"] == 4.0
        assert result["json"] == {"run": "r1", "rows": [1, 2]}  # rank 0's value everywhere
        assert result["tensor"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert result["all_agree"] is True and result["one_disagrees"] is False
        assert result["min"] == 3.0 and result["sum_array"] == [2.0, 0.5]
        # Payloads of different lengths, in rank order on every rank.
        assert result["gathered"] == [{"rank": 0, "items": []}, {"rank": 1, "items": list(range(40))}]


def test_a_world_of_one_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.setup("cpu")
    assert context.world_size == 1 and context.is_main and not context.distributed
    assert context.broadcast_json({"a": 1}) == {"a": 1} and context.all_reduce_max(2.5) == 2.5
    assert context.agree(True) and not context.agree(False)


# -- resuming --------------------------------------------------------------------------------------------------
EPOCHS = 4
CRASH_AT = 2  # 0-based: the run dies in its third epoch, after the checkpoint of the second


class Crash(Exception):
    pass


def prepared_frame():
    raw = synthetic.generate("tiny", seed=4)
    engineered = features.engineer(raw)
    frame = engineered.labels.merge(engineered.sales_history, on=["store_dept", "store", "dept", TIMESTAMP])
    frame = frame.merge(engineered.store_context, on=["store", TIMESTAMP]).sort_values(
        [TIMESTAMP, "store_dept"], kind="stable").reset_index(drop=True)
    return frame, Split.from_weeks(frame[TIMESTAMP], val_weeks=13, test_weeks=26)


def prepare(context: distributed.Context, frame, split, horizon: int = 1):
    """What load_training_arrays gives this rank: its own series' arrays, the preprocessing fitted over all ranks."""
    shard = frame[tables.series_part(frame["store_dept"], context.world_size) == context.rank]
    arrays, preprocessor, rows = train.training_arrays(shard, split, context, horizon)
    return arrays, {"rows": rows, "retrieval_seconds": 0.0, "offline_store": "none"}, preprocessor, split


def train_run(rank: int, port: int, workdir: str, crash: bool, data) -> None:
    torch.use_deterministic_algorithms(True)
    context = join_world(rank, port)
    config = settings.Config.defaults("train", workdir=workdir, epochs=EPOCHS, patience=EPOCHS, device="cpu",
                                      seed=3, hidden=(32, 16), members=1, dropout=0.0, batch_size=256)
    if crash:
        original = train.Trainer.train_epoch

        def train_epoch(self, epoch, bar):
            if epoch == CRASH_AT:
                raise Crash(f"rank {rank} lost in epoch {epoch + 1}")
            return original(self, epoch, bar)

        train.Trainer.train_epoch = train_epoch
    run_dir = Path(workdir, "models", "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        train.fit_run(config, context, run_dir, prepare(context, *data, config.horizon), "data")
    except Crash:
        pass  # as if the pod died: the next start resumes from checkpoint.pt
    finally:
        distributed.teardown(context)


def run_world(workdir, crash: bool, prepared) -> None:
    mp.spawn(train_run, args=(free_port(), str(workdir), crash, prepared), nprocs=WORLD, join=True)


@pytest.mark.slow
def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Same seed, same data: one run straight through, one killed in its third epoch and started again. With dropout
    off, the resumed run must end with the same weights (to float rounding, 1e-6) and the same history: the
    checkpoint holds everything the next epochs depend on (weights, averaged weights, optimizer, epoch, best loss).
    Dropout's random stream is not in the checkpoint, so with dropout on, a resumed run draws other masks."""
    prepared = prepared_frame()
    run_world(tmp_path / "straight", False, prepared)
    run_world(tmp_path / "resumed", True, prepared)
    interrupted = torch.load(tmp_path / "resumed" / "models" / "run" / "checkpoint.pt", weights_only=True)
    assert interrupted["EPOCH"] == CRASH_AT - 1
    assert not (tmp_path / "resumed" / "models" / "run" / "training.json").exists()
    run_world(tmp_path / "resumed", False, prepared)

    def final(name):
        run = tmp_path / name / "models" / "run"
        return (torch.load(run / "checkpoint.pt", weights_only=True),
                json.loads((run / "training.json").read_text()))

    (straight, straight_summary), (resumed, resumed_summary) = final("straight"), final("resumed")
    assert straight["EPOCH"] == resumed["EPOCH"] == EPOCHS - 1
    for key in ("MODEL_STATE", "TRAIN_STATE"):
        for name, tensor in straight[key].items():
            torch.testing.assert_close(resumed[key][name], tensor, rtol=0, atol=1e-6, msg=f"{key} {name}")
    for a, b in zip(straight_summary["history"], resumed_summary["history"], strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)



def build_and_draw(context: distributed.Context, out: str, data) -> None:
    """Build the Trainer as fit_run does, then write this rank's first weights and its next random numbers (dropout
    masks come from torch's global stream on the CPU: its next numbers are the next masks)."""
    config = settings.Config.defaults("train", workdir=out, device="cpu", seed=3, hidden=(32, 16), members=1,
                                      dropout=0.5, batch_size=256)
    arrays, _, preprocessor, _ = prepare(context, *data)
    meta = None
    if context.is_main:
        meta = {"model_config": train.model_lib.model_config(
            preprocessor.n_numeric, preprocessor.cardinalities, config.embed_dim, config.hidden, config.dropout,
            config.members, config.quantiles)}
    meta = context.broadcast_json(meta)
    trainer = train.Trainer(config, context, Path(out), train.on_device(context, arrays), meta)
    weights = next(trainer.raw_network.parameters()).detach().flatten()[:8].tolist()
    Path(out, f"{context.rank}.json").write_text(json.dumps({"draw": torch.rand(8).tolist(), "weights": weights,
                                                             "params": preprocessor.params}))


def dropout_draws(rank: int, port: int, out: str, data) -> None:
    context = join_world(rank, port)
    try:
        build_and_draw(context, out, data)
    finally:
        distributed.teardown(context)


def test_each_rank_drops_its_own_units_from_the_same_weights(tmp_path, monkeypatch):
    """Every rank starts from the same weights but draws its own dropout masks (the same masks on every rank would
    make N processes train like one on N times the batch); rank 0 draws what a one-process run draws."""
    data = prepared_frame()
    mp.spawn(dropout_draws, args=(free_port(), str(tmp_path), data), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD)]
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    alone = tmp_path / "alone"
    alone.mkdir()
    build_and_draw(distributed.setup("cpu"), str(alone), data)
    one_process = json.loads((alone / "0.json").read_text())
    assert ranks[0]["weights"] == ranks[1]["weights"] == one_process["weights"]
    assert ranks[0]["draw"] != ranks[1]["draw"]
    assert ranks[0]["draw"] == one_process["draw"]


# -- statistics over shards --------------------------------------------------------------------------------------
def assert_same_params(sharded, whole, path="params"):
    """Equal structure and values; floats to 1e-9 relative (sums over shards add in another order)."""
    assert type(sharded) is type(whole), path
    if isinstance(whole, dict):
        assert sharded.keys() == whole.keys(), path
        for key in whole:
            assert_same_params(sharded[key], whole[key], f"{path}.{key}")
    elif isinstance(whole, list):
        assert len(sharded) == len(whole), path
        for i, (a, b) in enumerate(zip(sharded, whole)):
            assert_same_params(a, b, f"{path}[{i}]")
    elif isinstance(whole, float):
        assert sharded == pytest.approx(whole, rel=1e-9, abs=1e-12), path
    else:
        assert sharded == whole, path


def test_the_preprocessing_fitted_over_shards_is_the_whole_set_one(tmp_path):
    """Each rank fits on its own series only; with the statistics reduced over ranks (means, spreads, medians of
    each department, vocabularies, series that go negative) both ranks hold what one process fitting every row
    holds. The two shards are far from alike: each holds series the other lacks, so a rank fitting alone would
    differ (checked too)."""
    data = prepared_frame()
    mp.spawn(dropout_draws, args=(free_port(), str(tmp_path), data), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text())["params"] for rank in range(WORLD)]
    frame, split = data
    whole = json.loads(json.dumps(Preprocessor.fit(frame[split.part(frame[TIMESTAMP]) == 0]).params))
    for params in ranks:
        assert_same_params(params, whole)
    shard = frame[(tables.series_part(frame["store_dept"], WORLD) == 0) & (split.part(frame[TIMESTAMP]) == 0)]
    alone = json.loads(json.dumps(Preprocessor.fit(shard).params))
    assert alone["scale"]["dept_fallback"] != whole["scale"]["dept_fallback"]
    assert alone["may_go_negative"] != whole["may_go_negative"]


def quantiles_over_shards(rank: int, port: int, out: str, values, groups) -> None:
    context = join_world(rank, port)
    try:
        mine = np.arange(len(values)) % WORLD == rank
        result = {"medians": statistics.medians(context, values[mine], groups[mine], 4).tolist(),
                  "quantiles": [statistics.quantile(context, values[mine], q) for q in (0.0, 0.1, 0.5, 0.83, 1.0)],
                  "mean_std": statistics.mean_std(context, values[mine])[:2]}
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown(context)


def test_medians_and_quantiles_over_shards_are_exact(tmp_path):
    """Order statistics found over two ranks are the very values a sort of all the rows gives (negative values,
    zeros of both signs, ties, an odd and an even group, and a group with no rows at all)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(1_000) * 1e4, [0.0, -0.0, 2.5, 2.5, -7.0]])
    groups = rng.integers(0, 3, len(values))  # group 3 is empty
    mp.spawn(quantiles_over_shards, args=(free_port(), str(tmp_path), values, groups), nprocs=WORLD, join=True)
    expected = pd.Series(values).groupby(groups).median().reindex(range(4)).to_numpy()
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"{rank}.json").read_text(), parse_constant=float)
        np.testing.assert_array_equal(np.array(result["medians"], dtype=float), expected)
        assert result["quantiles"] == [float(torch.quantile(torch.from_numpy(values), q))
                                       for q in (0.0, 0.1, 0.5, 0.83, 1.0)]
        assert result["mean_std"] == pytest.approx([values.mean(), values.std()], rel=1e-12)


def band_over_shards(rank: int, port: int, out: str, arrays: dict) -> None:
    context = join_world(rank, port)
    try:
        mine = {name: values[rank::WORLD] for name, values in arrays.items()}  # rank 1 has one row fewer
        result = train.calibrate_band(Path(out, "model.pt"), mine, context)
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown(context)


def test_the_band_widened_over_shards_is_the_one_process_widening(tmp_path):
    """Each rank scores its own validation rows; the widening (an order statistic of every rank's errors), the
    coverages and the saved model are those of one process scoring all the rows (to float32 rounding: the network
    computes each row within batches of another size)."""
    from salesfc import model as model_lib

    config = model_lib.model_config(4, [3], 2, [8], 0.0, members=1, quantiles=(0.1, 0.5, 0.9))
    network = model_lib.build(config).eval()
    numeric, categories = torch.randn(2001, 4), torch.randint(0, 3, (2001, 1))
    with torch.no_grad():
        target = (network(numeric, categories) + 5 * torch.randn(2001, 1)).float()
    arrays = {"val_numeric": numeric, "val_categories": categories, "val_days": torch.zeros(2001, dtype=torch.long),
              "val_target": target, "val_weight": torch.ones(2001, 1)}
    for folder in ("sharded", "alone"):
        (tmp_path / folder).mkdir()
        model_lib.save(tmp_path / folder / "model.pt", {"MODEL_STATE": network.state_dict(), "MODEL_CONFIG": config})
    mp.spawn(band_over_shards, args=(free_port(), str(tmp_path / "sharded"), arrays), nprocs=WORLD, join=True)
    alone = train.calibrate_band(tmp_path / "alone" / "model.pt", arrays)
    assert alone["widen"][0] > 0 and alone["validation_rows"] == 2001
    for rank in range(WORLD):
        result = json.loads((tmp_path / "sharded" / f"{rank}.json").read_text())
        assert result["widen"] == pytest.approx(alone["widen"], rel=1e-6)
        assert {k: v for k, v in result.items() if k != "widen"} == pytest.approx(
            {k: v for k, v in alone.items() if k != "widen"}, rel=1e-6)
    saved = model_lib.load(tmp_path / "sharded" / "model.pt")[1]["MODEL_CONFIG"]["band_widen"]
    assert saved == pytest.approx(alone["widen"], rel=1e-6)
