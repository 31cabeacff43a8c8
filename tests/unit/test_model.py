"""The network and its checkpoint: rebuilt from MODEL_CONFIG, loaded with weights_only."""

import math

import numpy as np
import pytest
import torch

from salesfc import model as model_lib


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    config = model_lib.model_config(12, [5, 7, 54, 4], 3, [16, 8], 0.1)
    network = model_lib.build(config)
    path = tmp_path / "model.pt"
    model_lib.save(path, {"MODEL_STATE": network.state_dict(), "OPTIMIZER_STATE": {}, "EPOCH": 3,
                          "VAL_LOSS": 0.5, "MODEL_CONFIG": config})
    loaded, checkpoint = model_lib.load(path)
    assert checkpoint["EPOCH"] == 3 and checkpoint["MODEL_CONFIG"] == config
    numeric, categories = torch.randn(9, 12), torch.randint(0, 4, (9, 4))
    network.eval()
    torch.testing.assert_close(loaded(numeric, categories), network(numeric, categories))
    assert not list(tmp_path.glob(".*.tmp"))   # written atomically, no leftovers


class Anything:
    """Stands for any pickled object: unpickling one can run code."""


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"MODEL_STATE": Anything()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        model_lib.load(path)


def test_flops_per_sample_counts_the_linear_layers():
    config = model_lib.model_config(10, [3, 3], 5, [256, 128, 64], 0.0)
    width = 10 + 2 * 5
    assert model_lib.flops_per_sample(config) == 6 * (width * 256 + 256 * 128 + 128 * 64 + 64)


def test_pooled_dropout_drops_at_its_rate_keeps_the_mean_and_is_off_in_eval():
    torch.manual_seed(0)
    layer = model_lib.Dropout(0.2)
    x = torch.ones(4096, 64)
    out = layer(x)
    assert abs(float((out == 0).float().mean()) - 0.2) < 0.01
    assert abs(float(out.mean()) - 1.0) < 0.02
    # Consecutive steps meet different masks (a new window of the pool), and the pool is drawn again in time.
    assert not torch.equal(layer(x), out)
    for _ in range(model_lib.Dropout.REFRESH_STEPS):
        layer(x)
    assert layer.uses < model_lib.Dropout.REFRESH_STEPS
    # Gradients flow through the kept entries only, scaled like the values.
    x = torch.ones(256, 8, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    layer.eval()
    assert torch.equal(layer(x), x)


def test_quantile_forecasts_never_cross_and_the_median_is_the_point_forecast(tmp_path):
    config = model_lib.model_config(6, [5, 7], 3, [16], 0.0, members=3, quantiles=(0.1, 0.5, 0.9))
    network = model_lib.build(config).eval()
    numeric, categories = torch.randn(200, 6) * 5, torch.randint(0, 5, (200, 2))
    with torch.no_grad():
        for layer in network.modules():  # large random weights: wild raw outputs the ordering must still hold
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 3)
        bands = network(numeric, categories, quantiles=True)
        members = network(numeric, categories, quantiles=True, per_member=True)
    assert bands.shape == (200, 1, 3) and members.shape == (3, 200, 1, 3)
    assert (bands[..., 0] <= bands[..., 1]).all() and (bands[..., 1] <= bands[..., 2]).all()
    assert (members[..., :-1] <= members[..., 1:]).all()
    torch.testing.assert_close(network(numeric, categories), bands[..., 1])
    # The saved model rebuilds with its quantiles.
    path = tmp_path / "model.pt"
    model_lib.save(path, {"MODEL_STATE": network.state_dict(), "MODEL_CONFIG": config})
    loaded, _ = model_lib.load(path)
    assert loaded.quantiles == (0.1, 0.5, 0.9)
    torch.testing.assert_close(loaded(numeric, categories, quantiles=True), bands)


def test_ordered_quantiles_keeps_the_median_output_and_stacks_gaps_outwards():
    center, raw = torch.tensor([[2.0]]), torch.zeros(1, 4)
    gap = torch.nn.functional.softplus(torch.tensor(0.0))
    expected = torch.tensor([[2 - 2 * gap, 2 - gap, 2.0, 2 + gap, 2 + 2 * gap]])
    torch.testing.assert_close(model_lib.ordered_quantiles(center, raw, 2), expected)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_the_training_loss_of_a_quantile_is_lowest_at_that_quantile(q):
    from salesfc.train import quantile_loss

    target = torch.distributions.LogNormal(0.0, 0.5).sample((4000,), ).double()
    candidates = torch.linspace(0.2, 3.0, 561, dtype=torch.float64)
    losses = torch.stack([quantile_loss(torch.full_like(target, c), target, q).mean() for c in candidates])
    best = float(candidates[losses.argmin()])
    assert best == pytest.approx(float(torch.quantile(target, q)), abs=0.02)


def test_a_wider_huber_delta_trains_the_median_on_squared_error_near_the_median_of_log_symmetric_noise():
    from salesfc.train import training_loss

    torch.manual_seed(0)
    sigma = 0.1  # a large department's noise
    target = torch.exp(sigma * torch.randn(20_000, dtype=torch.float64))
    candidates = torch.linspace(0.9, 1.1, 801, dtype=torch.float64)
    losses = torch.stack([training_loss(torch.full_like(target, c), target, median_delta=0.25).mean()
                          for c in candidates])
    best = float(candidates[losses.argmin()])
    # Between the median (1) and the mean (exp(sigma^2 / 2)): the squared part pulls it up a little.
    assert 1.0 - 0.003 < best < math.exp(sigma ** 2 / 2) + 0.003
    # An error the size of that noise is in the squared part (half its square); the default delta is absolute error's
    # linear part there, and the band's quantiles keep it whatever the median's is.
    error, zero = torch.tensor([sigma], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    assert float(training_loss(error, zero, median_delta=0.25)) == pytest.approx(0.5 * sigma ** 2)
    assert float(training_loss(error, zero)) == pytest.approx(0.02 * (sigma - 0.01))
    assert float(training_loss(error, zero, 0.9, median_delta=0.25)) == float(training_loss(error, zero, 0.9))


def test_the_band_learns_without_moving_the_median_network():
    config = model_lib.model_config(6, [5, 7], 3, [16, 8], 0.0, members=2, quantiles=(0.1, 0.5, 0.9))
    network = model_lib.build(config)
    bands = network(torch.randn(32, 6), torch.randint(0, 5, (32, 2)), quantiles=True, per_member=True)
    (bands[..., 0].sum() + bands[..., 2].sum()).backward()  # the tails' losses only
    for member in network.members:
        assert member.gaps.weight.grad.abs().sum() > 0
        # (torch.cat hands the median's slot a zero gradient: no gradient, or only zeros, reaches these)
        assert all(p.grad is None or not p.grad.any()
                   for p in [*member.mlp.parameters(), *member.embedding.parameters()])


def test_the_median_of_a_quantile_network_learns_from_its_own_loss():
    config = model_lib.model_config(6, [5, 7], 3, [16, 8], 0.0, members=2, quantiles=(0.1, 0.5, 0.9))
    network = model_lib.build(config)
    bands = network(torch.randn(32, 6), torch.randint(0, 5, (32, 2)), quantiles=True, per_member=True)
    bands[..., 1].sum().backward()  # the median's loss only
    for member in network.members:
        assert member.mlp[0].weight.grad.abs().sum() > 0
        assert member.gaps.weight.grad is None or not member.gaps.weight.grad.any()


def test_the_band_is_widened_to_hold_its_share_of_the_validation_weeks(tmp_path):
    from salesfc.train import calibrate_band

    config = model_lib.model_config(4, [3], 2, [8], 0.0, members=2, quantiles=(0.1, 0.5, 0.9))
    network = model_lib.build(config).eval()
    path = tmp_path / "model.pt"
    model_lib.save(path, {"MODEL_STATE": network.state_dict(), "MODEL_CONFIG": config})
    numeric, categories = torch.randn(2000, 4), torch.randint(0, 3, (2000, 1))
    with torch.no_grad():
        median = network(numeric, categories)
    # Actuals spread far wider than the untrained band: most fall outside it.
    arrays = {"val_numeric": numeric, "val_categories": categories, "val_days": torch.zeros(2000, dtype=torch.long),
              "val_target": (median + 5 * torch.randn(2000, 1)).float(), "val_weight": torch.ones(2000, 1)}
    result = calibrate_band(path, arrays)
    assert result["validation_coverage_before"] < 0.5 and result["widen"][0] > 0
    assert 0.8 <= result["validation_coverage_after"] < 0.82
    loaded, checkpoint = model_lib.load(path)
    assert checkpoint["MODEL_CONFIG"]["band_widen"] == result["widen"]
    with torch.no_grad():
        before, after = network(numeric, categories, quantiles=True), loaded(numeric, categories, quantiles=True)
    torch.testing.assert_close(after[..., 1], before[..., 1])  # the point forecast does not move
    torch.testing.assert_close(after[..., 0], before[..., 0] - result["widen"][0])
    torch.testing.assert_close(after[..., 2], before[..., 2] + result["widen"][0])


def test_a_multi_horizon_network_forecasts_every_week_ahead_with_ordered_quantiles(tmp_path):
    config = model_lib.model_config(6, [5, 7], 3, [16, 8], 0.0, members=2, quantiles=(0.1, 0.5, 0.9), horizon=13)
    network = model_lib.build(config).eval()
    numeric, categories = torch.randn(50, 6) * 5, torch.randint(0, 5, (50, 2))
    days = torch.full((50,), 15_340)  # 2012-01-01 and on
    with torch.no_grad():
        for layer in network.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 3)
        bands = network(numeric, categories, days, quantiles=True)
        members = network(numeric, categories, days, quantiles=True, per_member=True)
    assert bands.shape == (50, 13, 3) and members.shape == (2, 50, 13, 3)
    assert (members[..., :-1] <= members[..., 1:]).all()
    torch.testing.assert_close(network(numeric, categories, days), bands[..., 1])
    # Each horizon is its own forecast, not one number repeated.
    assert (bands[:, 1:, 1] != bands[:, :1, 1]).any()
    path = tmp_path / "model.pt"
    model_lib.save(path, {"MODEL_STATE": network.state_dict(), "MODEL_CONFIG": config})
    loaded, _ = model_lib.load(path)
    assert loaded.horizon == 13
    torch.testing.assert_close(loaded(numeric, categories, days, quantiles=True), bands)
    with pytest.raises(ValueError, match="days"):
        network(numeric, categories)


def test_a_rows_forecasts_do_not_depend_on_the_rest_of_its_batch():
    """The calendar's terms are looked up per distinct origin in a batch and then per row: each row must get its own
    origin's, whatever else and in whatever order the batch holds."""
    config = model_lib.model_config(4, [5], 3, [8], 0.0, members=2, quantiles=(0.1, 0.5, 0.9), horizon=13)
    network = model_lib.build(config).eval()
    numeric, categories = torch.randn(40, 4), torch.randint(0, 5, (40, 1))
    days = 15_340 + 7 * torch.randint(0, 60, (40,))  # weekly origins, several rows sharing each
    with torch.no_grad():
        together = network(numeric, categories, days, quantiles=True)
        order = torch.randperm(40)
        shuffled = network(numeric[order], categories[order], days[order], quantiles=True)
        alone = torch.cat([network(numeric[i:i + 1], categories[i:i + 1], days[i:i + 1], quantiles=True)
                           for i in range(40)])
    torch.testing.assert_close(shuffled, together[order])
    torch.testing.assert_close(alone, together)


def test_a_multi_horizon_networks_gradients_are_the_same_on_every_run():
    """Same seed, same batch: the same gradients to the bit, so a run can be repeated. A scatter-add of the calendar's
    terms over (row, horizon) pairs added them in an order that varied between runs (differences of 4e-5 here)."""

    def gradients():
        torch.manual_seed(0)
        config = model_lib.model_config(6, [5, 7], 3, [16], 0.0, members=2, quantiles=(0.1, 0.5, 0.9), horizon=13)
        network = model_lib.build(config)
        draw = torch.Generator().manual_seed(1)
        numeric, categories = torch.randn(4096, 6, generator=draw), torch.randint(0, 5, (4096, 2), generator=draw)
        days = 15_340 + 7 * torch.randint(0, 150, (4096,), generator=draw)
        out = network(numeric, categories, days, quantiles=True, per_member=True)
        (out * torch.randn(out.shape, generator=draw)).sum().backward()
        return {name: parameter.grad.clone() for name, parameter in network.named_parameters()}

    first = gradients()
    for _ in range(3):
        again = gradients()
        for name, gradient in first.items():
            assert torch.equal(again[name], gradient), name


def test_next_week_is_the_one_week_heads_alone_and_only_next_weeks_loss_trains_that_head():
    """A 13-week network's next-week forecast is its one-week head's, as in a one-week network: the later weeks' losses
    reach the shared layers through the decoder, never the head. A checkpoint from before (no ``next_week_alone`` in
    its config) keeps the forecasts it was trained to make: every week the head plus its term."""
    torch.manual_seed(0)
    config = model_lib.model_config(6, [5, 7], 3, [16, 8], 0.0, members=2, horizon=13)
    network = model_lib.build(config)
    numeric, categories = torch.randn(40, 6), torch.randint(0, 5, (40, 2))
    days = torch.full((40,), 15_340)
    heads = [member.mlp[-1] for member in network.members]
    shared = [member.mlp[0] for member in network.members]
    decoders = [member.out for member in network.members]

    def grads(loss, layers):
        return torch.autograd.grad(loss, [layer.weight for layer in layers], allow_unused=True)

    forecast = network(numeric, categories, days)
    later = forecast[:, 1:].pow(2).sum()
    assert all(g is None or not g.any() for g in grads(later, heads))
    assert all(g.abs().sum() > 0 for g in grads(network(numeric, categories, days)[:, 1:].pow(2).sum(), shared))
    assert all(g is None or not g.any()
               for g in grads(network(numeric, categories, days)[:, 0].pow(2).sum(), decoders))
    with torch.no_grad():
        for layer in decoders:
            layer.weight.add_(1.0)
        moved = network(numeric, categories, days)
    torch.testing.assert_close(moved[:, 0], forecast[:, 0].detach())  # the decoder does not make next week
    assert (moved[:, 1:] != forecast[:, 1:].detach()).all()

    before = {k: v for k, v in config.items() if k != "next_week_alone"}
    older = model_lib.build(before)
    older.load_state_dict(network.state_dict())
    with torch.no_grad():
        old = older(numeric, categories, days)
        for layer in [member.out for member in older.members]:
            layer.weight.add_(1.0)
        assert (older(numeric, categories, days)[:, 0] != old[:, 0]).all()  # its decoder does make next week
    torch.testing.assert_close(old[:, 1:], moved[:, 1:])  # the later weeks are the same sum in both


def test_each_horizon_sees_the_calendar_of_its_own_target_week():
    import pandas as pd

    from salesfc import features
    from salesfc.tables import epoch_days

    network = model_lib.build(model_lib.model_config(2, [3], 2, [4], 0.0, horizon=8))
    origins = pd.Series(pd.to_datetime(["2011-11-04", "2012-12-21", "2010-02-05", "2011-11-04"]))  # one origin twice
    found = network.target_calendar(torch.from_numpy(epoch_days(origins.dt.tz_localize("UTC"))))
    week, near = found.week[found.index], found.near[found.index]
    assert found.week.shape == (len(set(origins)), 8)  # each origin's target weeks once
    for h in range(8):
        target = origins + pd.Timedelta(weeks=h)
        expected = features.calendar(target)
        np.testing.assert_array_equal(week[:, h].numpy(), expected["week_of_year"])
        np.testing.assert_allclose(near[:, h, 0].numpy(), expected["weeks_to_thanksgiving"] / features.HOLIDAY_REACH,
                                   rtol=1e-6)
        np.testing.assert_allclose(near[:, h, 1].numpy(), expected["weeks_to_christmas"] / features.HOLIDAY_REACH,
                                   rtol=1e-6)
    # Thanksgiving 2011 (Nov 24): the third target week from an origin of Nov 4 (Nov 18) is before it, the fifth after.
    assert float(near[0, 2, 0]) > 0 > float(near[0, 4, 0])
