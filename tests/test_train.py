"""The training engine: exact resume after a kill, the NaN stop, stale checkpoints, sharding, DDP."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from nas_core.engine.checkpoint import load_checkpoint
from nas_core.engine.schedules import build_schedule
from nas_core.engine.seeding import EpochBatchSampler, SeededDataset, make_train_loader
from nas_core.engine.training import NonFiniteLossError, TrainConfig, train
from tests.test_schedules import lr_curve

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH = 4, 4


class NoisyToy(Dataset):
    """12 fixed 8x8 images plus augmentation noise drawn from torch's global generator, like the
    data layer's transforms (the loader's SeededDataset seeds it per sample)."""

    def __init__(self, n: int = 12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(3, 8, 8), self.y[i]


def toy_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def dropout_net() -> nn.Module:
    """toy_net with dropout: every training step draws from torch's global generator."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def run(ckpt_dir, *, step_hook=None, on_epoch_end=None, checkpoint_every=0, loss_fn=nn.functional.cross_entropy,
        fingerprint="toy", epochs=EPOCHS, grad_clip=None, net=toy_net):
    torch.set_num_threads(1)
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = make_train_loader(NoisyToy(), BATCH, seed=3)
    schedule = build_schedule("step", epochs, (2,) if epochs > 2 else ())  # the same lr in every run's epochs 0-1
    config = TrainConfig(epochs, ckpt_dir, fingerprint=fingerprint, grad_clip=grad_clip,
                         checkpoint_every=checkpoint_every)
    result = train(model, loss_fn, loader, optimizer, schedule, config, step_hook=step_hook,
                   on_epoch_end=on_epoch_end, log=lambda _: None)
    return model, result


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full"))


@pytest.mark.parametrize("kill_at,checkpoint_every,resumes_at", [
    ((1, 2), 0, (1, 0)),  # mid-epoch, epoch checkpoints only: the epoch is redone
    ((1, 2), 2, (1, 2)),  # mid-epoch with a checkpoint every 2 batches: continues at batch 2
    ((2, 0), 1, (2, 1)),
], ids=["epoch-ckpt", "batch-ckpt", "first-batch"])
def test_resume_after_a_kill_mid_epoch_equals_the_uninterrupted_run(tmp_path, uninterrupted, kill_at,
                                                                     checkpoint_every, resumes_at):
    def kill(epoch, batch, loss):
        if (epoch, batch) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path, step_hook=kill, checkpoint_every=checkpoint_every)
    model, result = run(tmp_path, checkpoint_every=checkpoint_every)
    full_model, full = uninterrupted
    assert result.resumed_from == resumes_at
    assert same_weights(model, full_model)
    assert [h["loss"] for h in result.history] == [h["loss"] for h in full.history]


@pytest.fixture(scope="module")
def uninterrupted_dropout(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full_dropout"), net=dropout_net)


@pytest.mark.parametrize("kill_at,checkpoint_every,resumes_at", [
    ((1, 2), 0, (1, 0)),
    ((1, 2), 2, (1, 2)),
    ((2, 1), 1, (2, 2)),
], ids=["epoch-ckpt", "batch-ckpt", "every-batch"])
def test_resume_restores_the_draws_of_a_step_that_uses_randomness(tmp_path, uninterrupted_dropout, kill_at,
                                                                   checkpoint_every, resumes_at):
    # every step after the resume point draws dropout masks from the global generator: the run
    # equals the uninterrupted one only if that generator continues where the checkpoint left it
    # (its state restored, and no loader drawing a worker seed from it at the epoch's start)
    def kill(epoch, batch, loss):
        if (epoch, batch) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path, step_hook=kill, checkpoint_every=checkpoint_every, net=dropout_net)
    model, result = run(tmp_path, checkpoint_every=checkpoint_every, net=dropout_net)
    full_model, full = uninterrupted_dropout
    assert result.resumed_from == resumes_at
    assert same_weights(model, full_model)
    assert [h["loss"] for h in result.history] == [h["loss"] for h in full.history]


def test_other_dropout_masks_give_other_weights(tmp_path, uninterrupted_dropout):
    # what makes the test above able to fail: the same start with other masks ends elsewhere
    def other_masks() -> nn.Module:
        model = dropout_net()
        torch.manual_seed(2)
        return model

    model, _ = run(tmp_path, net=other_masks)
    assert not same_weights(model, uninterrupted_dropout[0])


def test_a_kill_in_the_epoch_callback_resumes_at_that_epoch(tmp_path, uninterrupted):
    def kill(epoch, metrics, model):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path, on_epoch_end=kill)
    model, result = run(tmp_path)
    assert result.resumed_from == (2, 0)
    assert same_weights(model, uninterrupted[0])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    steps_per_epoch = 12 // BATCH
    calls = {"n": 0}

    def poisoned(logits, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if calls["n"] == 2 * steps_per_epoch + 2 else loss

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 3, batch 2.*last good checkpoint .*last\.pt"):
        run(tmp_path, loss_fn=poisoned)
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["batch"]) == (2, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    two_epochs, _ = run(tmp_path / "two", epochs=2)  # same schedule milestone (2) as the poisoned run
    assert all(torch.equal(state["model"][k], v) for k, v in two_epochs.state_dict().items())


def test_inf_loss_before_any_checkpoint_says_none_was_written(tmp_path):
    def inf_loss(logits, target):
        return nn.functional.cross_entropy(logits, target) + float("inf")

    with pytest.raises(NonFiniteLossError, match="loss is inf at epoch 1, batch 1.*none was written yet"):
        run(tmp_path, loss_fn=inf_loss)
    assert not (tmp_path / "last.pt").exists()


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    run(tmp_path, epochs=2, fingerprint="a")
    _, result = run(tmp_path, epochs=2, fingerprint="b")
    assert result.resumed_from is None and len(result.history) == 2


def test_a_finished_run_resumes_to_its_end_without_training(tmp_path):
    first, _ = run(tmp_path)
    again, result = run(tmp_path)
    assert result.resumed_from == (EPOCHS, 0) and len(result.history) == EPOCHS
    assert same_weights(first, again)


def test_gradient_clipping_bounds_the_update(tmp_path):
    start = dict(toy_net().named_parameters())

    def moved(model):  # parameters only: BN running statistics move without gradients
        return max((p - start[k]).abs().max().item() for k, p in model.named_parameters())

    free, _ = run(tmp_path / "free", epochs=1)
    clipped, _ = run(tmp_path / "clipped", epochs=1, grad_clip=1e-6)
    assert moved(clipped) < 0.05 * moved(free)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_epoch_sampler_shards_are_disjoint_equal_and_reshuffled_each_epoch(world_size):
    shards = []
    for rank in range(world_size):
        s = EpochBatchSampler(20, 2, seed=5, rank=rank, world_size=world_size)
        s.set_epoch(0)
        shards.append([i for batch in s for _, i in batch])
    assert len({len(x) for x in shards}) == 1
    flat = [i for x in shards for i in x]
    assert len(flat) == len(set(flat))
    s = EpochBatchSampler(20, 2, seed=5)
    s.set_epoch(1)
    assert [i for batch in s for _, i in batch] != shards[0] or world_size > 1


def test_epoch_sampler_starts_at_the_requested_batch():
    s = EpochBatchSampler(10, 3, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=2)
    assert list(s) == full[2:] and len(s) == 3


def test_batch_larger_than_the_shard_is_an_error_naming_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(6, 4, world_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_amp_on_cuda_runs_in_float16_and_resumes_exactly(tmp_path, monkeypatch):
    from nas_core.engine.distributed import DistInfo

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    info = DistInfo(device=torch.device("cuda"))
    dtypes = set()

    def go(ckpt_dir, hook=None):
        model = toy_net()
        model[0].register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = make_train_loader(NoisyToy(), BATCH, seed=3, dist_info=info)
        result = train(model, nn.functional.cross_entropy, loader, optimizer, build_schedule("constant", 3),
                       TrainConfig(3, ckpt_dir, amp=True, checkpoint_every=1), dist_info=info, step_hook=hook,
                       log=lambda _: None)
        return model, result

    def kill(epoch, batch, loss):
        if (epoch, batch) == (1, 1):
            raise Killed

    full, _ = go(tmp_path / "full")
    with pytest.raises(Killed):
        go(tmp_path / "killed", kill)
    resumed, result = go(tmp_path / "killed")
    assert dtypes == {torch.float16}
    assert result.resumed_from == (1, 2)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["scaler"]["scale"] > 0
    assert same_weights(full, resumed)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from tests.test_train import NoisyToy, toy_net
    from nas_core.engine.schedules import build_schedule
    from nas_core.engine.distributed import init_distributed
    from nas_core.engine.seeding import make_train_loader
    from nas_core.engine.training import TrainConfig, train
    info = init_distributed("cpu")
    model = toy_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = make_train_loader(NoisyToy(), 2, seed=3, dist_info=info)
    result = train(model, torch.nn.functional.cross_entropy, loader, opt, build_schedule("constant", 2),
                   TrainConfig(2, {ckpt!r}), dist_info=info, log=lambda _: None)
    torch.save(model.state_dict(), {ckpt!r} + f"/rank{{info.rank}}.pt")
""")


@pytest.mark.slow
def test_ddp_under_torchrun_on_cpu_keeps_the_replicas_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), ckpt=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    params = [k for k in rank0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(rank0[k], rank1[k]) for k in params)  # gradients were all-reduced
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_the_learning_rate_follows_the_schedule_at_every_step(tmp_path):
    # a schedule is a function of the fractional epoch: poly moves within an epoch too
    model = toy_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = build_schedule("poly", 3)
    applied = []
    train(model, nn.functional.cross_entropy, make_train_loader(NoisyToy(), BATCH, seed=3), optimizer, schedule,
          TrainConfig(3, tmp_path), step_hook=lambda e, b, loss: applied.append(optimizer.param_groups[0]["lr"]),
          log=lambda _: None)
    assert applied == pytest.approx(lr_curve(schedule, 0.05, 3, 12 // BATCH))


def test_an_image_is_augmented_anew_every_epoch_and_alike_within_one():
    data = SeededDataset(NoisyToy(), seed=3)
    assert torch.equal(data[(0, 5)][0], data[(0, 5)][0])
    assert not torch.equal(data[(0, 5)][0], data[(1, 5)][0])
