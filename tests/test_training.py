"""Training-loop helpers: schedule, early stopping, optimiser groups, batches, the CPU set-up."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from artsim_lib.models import training

# -- learning-rate schedule ---------------------------------------------------------------------


def test_warmup_rises_linearly_to_the_base_rate():
    # 4 warm-up steps: 1/4, 2/4, 3/4, then the full rate at the first decay step.
    assert [training.lr_factor(s, 20, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert training.lr_factor(4, 20, 4) == pytest.approx(1.0)


@pytest.mark.parametrize("kind,mid", [("cosine", 0.5), ("linear", 0.5), ("constant", 1.0)])
def test_decay_midpoint_and_end(kind, mid):
    # 10 warm-up steps, 100 in all: step 55 is half-way through the decay.
    assert training.lr_factor(55, 100, 10, kind) == pytest.approx(mid)
    assert training.lr_factor(100, 100, 10, kind) == pytest.approx(1.0 if kind == "constant" else 0.0)


def test_cosine_quarter_and_floor():
    # A quarter of the way: 0.5 * (1 + cos(pi/4)); with a floor f the curve is f + (1 - f) * that.
    q = 0.5 * (1 + math.cos(math.pi / 4))
    assert training.lr_factor(25, 100, 0) == pytest.approx(q)
    assert training.lr_factor(25, 100, 0, floor=0.1) == pytest.approx(0.1 + 0.9 * q)


def test_scheduler_applies_the_factor_to_every_group():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [w], "lr": 0.1}])
    sched = training.warmup_schedule(opt, total_steps=10, warmup_ratio=0.2, kind="linear")
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * training.lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert seen == pytest.approx(expected)
    assert seen[1] == pytest.approx(0.1) and seen[-1] < seen[2]


# -- early stopping --------------------------------------------------------------------------------


def _replay(values, patience, **kw):
    stopper, improved = training.EarlyStopping(patience, **kw), []
    for epoch, v in enumerate(values, start=1):
        improved.append(stopper.step(v, epoch))
        if stopper.should_stop:
            return stopper, epoch, improved
    return stopper, None, improved


def test_stops_after_patience_epochs_without_improvement():
    stopper, stopped, improved = _replay([1.0, 0.8, 0.85, 0.81, 0.9, 0.1], patience=3)
    assert stopped == 5  # epochs 3, 4 and 5 did not beat 0.8; epoch 6 is never seen
    assert stopper.best_epoch == 2 and stopper.best == pytest.approx(0.8)
    assert improved == [True, True, False, False, False]


def test_an_improvement_resets_the_count():
    stopper, stopped, _ = _replay([1.0, 1.1, 1.2, 0.9, 1.0, 1.0], patience=3)
    assert stopped is None and stopper.best_epoch == 4 and stopper.bad_epochs == 2


def test_min_delta_and_max_mode():
    # 0.795 is not better than 0.8 by more than 0.01.
    stopper, stopped, _ = _replay([0.8, 0.795, 0.79], patience=2, min_delta=0.01)
    assert stopped == 3 and stopper.best_epoch == 1
    stopper, _, improved = _replay([0.1, 0.3, 0.2], patience=5, mode="max")
    assert improved == [True, True, False] and stopper.best == pytest.approx(0.3)


def test_nan_is_never_a_best():
    stopper, stopped, improved = _replay([float("nan"), float("nan")], patience=2)
    assert stopped == 2 and stopper.best_epoch is None and improved == [False, False]


# -- optimiser -----------------------------------------------------------------------------------------


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    return net


def test_adamw_skips_decay_on_biases_and_norms_and_frozen_params():
    net = _net()
    net[2].weight.requires_grad_(False)
    opt = training.adamw(net, lr=0.01, weight_decay=0.1)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_decay[0.1] == {id(net[0].weight)}
    assert by_decay[0.0] == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    assert id(net[2].weight) not in set().union(*by_decay.values())


def test_adamw_lr_overrides_by_prefix():
    net = _net()
    opt = training.adamw(net, lr=0.01, weight_decay=0.0, lr_overrides={"2.": 1e-4})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(net[2].weight)] == 1e-4 and lr_of[id(net[0].weight)] == 0.01


def test_adamw_refuses_an_all_frozen_model():
    net = training.set_trainable(_net(), False)
    with pytest.raises(ValueError, match="nothing to train"):
        training.adamw(net, lr=0.01)


def test_set_trainable_by_prefix():
    net = training.set_trainable(_net(), ["0.", "2.bias"])
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["0.weight", "0.bias", "2.bias"]
    assert training.count_parameters(net, trainable_only=True) == 4 * 8 + 8 + 2


# -- batches and history ---------------------------------------------------------------------------------


def test_batch_indices_cover_each_item_once_and_shuffle_by_seed():
    batches = list(training.batch_indices(10, 4))
    assert [len(b) for b in batches] == [4, 4, 2] and np.concatenate(batches).tolist() == list(range(10))
    a = np.concatenate(list(training.batch_indices(10, 4, shuffle=True, seed=1)))
    b = np.concatenate(list(training.batch_indices(10, 4, shuffle=True, seed=1)))
    c = np.concatenate(list(training.batch_indices(10, 4, shuffle=True, seed=2)))
    assert sorted(a) == list(range(10)) and (a == b).all() and not (a == c).all()
    assert [len(x) for x in training.batch_indices(10, 4, drop_last=True)] == [4, 4]
    assert training.num_batches(10, 4) == 3 and training.num_batches(10, 4, drop_last=True) == 2


def test_epoch_seeds_differ_and_repeat():
    seeds = [training.epoch_seed(7, e) for e in range(5)]
    assert len(set(seeds)) == 5 and seeds == [training.epoch_seed(7, e) for e in range(5)]


def test_history_frame_and_last():
    h = training.History()
    h.log(epoch=1, split="train", loss=torch.tensor(0.5))
    h.log(epoch=1, split="val", loss=0.7)
    h.log(epoch=2, split="train", loss=0.4)
    df = h.frame()
    assert list(df.columns) == ["epoch", "split", "loss"] and len(df) == 3
    assert isinstance(df.loc[0, "loss"], float) and h.last("val")["loss"] == 0.7 and h.last()["epoch"] == 2
    assert training.mean_of([1.0, 4.0], [3, 1]) == pytest.approx(1.75) and math.isnan(training.mean_of([]))


# -- device set-up ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cpu_setup_is_plain_float32(dtype):
    s = training.setup("cpu", dtype, mixed_precision=True)
    assert s.device.type == "cpu" and s.amp_dtype is None and not s.scaler.is_enabled()
    with s.autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_setup_step_updates_weights_clears_grads_and_steps_the_schedule():
    net = _net()
    s = training.setup("cpu", "float32")
    opt = training.adamw(net, lr=0.1)
    sched = training.warmup_schedule(opt, 10, 0.0, "linear")
    before = net[0].weight.detach().clone()
    loss = net(torch.randn(5, 4)).pow(2).mean()
    s.step(loss, opt, sched, clip_norm=1.0)
    assert not torch.equal(before, net[0].weight) and net[0].weight.grad is None
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9)


def test_plot_history_draws_one_panel_per_metric():
    df = pd.DataFrame(
        {
            "epoch": [1, 1, 2, 2],
            "split": ["train", "val"] * 2,
            "loss": [1.0, 1.2, 0.8, 1.1],
            "acc": [0.2, 0.1, 0.4, 0.3],
        }
    )
    from artsim_lib.plots.finetune import plot_history

    fig = plot_history(df, ["loss", "acc", "missing"], best_epoch=2)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # train, val, best marker


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_half_dtypes_autocast_only_on_cuda(monkeypatch):
    monkeypatch.setattr(training, "pick_device", lambda d: torch.device("cuda"))  # no GPU needed
    assert training.setup("cuda", "float16").amp_dtype == torch.float16
    assert training.setup("cuda", "bfloat16").amp_dtype == torch.bfloat16
    assert training.setup("cuda", "float32").amp_dtype is None
    assert training.setup("cuda", "float16", mixed_precision=False).amp_dtype is None


def test_an_autocast_setup_trains_in_the_half_dtype():
    # bfloat16 autocast also exists on the CPU: the same code path as CUDA, without the scaler.
    net = _net()
    s = training.Setup(torch.device("cpu"), torch.bfloat16)
    opt = training.adamw(net, lr=0.1)
    before = net[0].weight.detach().clone()
    with s.autocast():
        out = net(torch.randn(5, 4))
    assert out.dtype == torch.bfloat16 and net[0].weight.dtype == torch.float32  # weights stay float32
    s.step(out.float().pow(2).mean(), opt)
    assert not torch.equal(before, net[0].weight)
