"""The network and its checkpoint: rebuilt from MODEL_CONFIG, loaded with weights_only."""

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
