"""Sharded training (training/shard.py) on the CPU with gloo: FSDP2 over 2 ranks against 1 unsharded process,
DCP checkpoints resumed exactly and with another world size, the gathered export, unsafe checkpoints refused."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import tiny_pair
from models import VAR, load_var
from training.config import ConfigError
from training.loop import LoopSettings, Trainer
from training.optim import LRSchedule, build_optimizer
from training.shard import (META_NAME, check_shard, ensure_process_group, export_full_state_dict, load_sharded,
                            mp_policy, quiet_view_warning, read_meta, save_sharded, sharded_checkpoint, unsharded_var,
                            wrap_fsdp)
from training.state import export_weights
from utils.checkpoint import CheckpointError
from utils.dist import DistInfo

GLOBAL_BATCH, STEPS, SAVE_AT, CLIP, LR = 4, 4, 2, 0.5, 3e-2
CPU = torch.device("cpu")
# fp32 tolerance of 2 ranks against 1 process, relative to each tensor's update over the run: gloo's
# reduce-scatter adds the two ranks' gradients in another order than one process accumulates them, and Adam's
# first steps divide by sqrt(v) ~ |g|, so a rounding-level change of a near-zero gradient moves that element by
# up to lr. Measured: at most 2e-6 of the update's norm.
UPDATE_RTOL = 1e-4


def no_drop_path(model: VAR) -> VAR:
    for block in model.blocks:
        block.drop_path.p = 0.0  # per-rank randomness would differ between 2 ranks and 1 process
    return model


def fresh_var() -> VAR:
    return no_drop_path(tiny_pair(depth=2)[1].train())


def batch(step: int, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch of a step: labels, teacher-forcing inputs, target tokens."""
    g = torch.Generator().manual_seed(1000 + step)
    labels = torch.randint(0, config.num_classes + 1, (GLOBAL_BATCH,), generator=g)
    inputs = torch.randn(GLOBAL_BATCH, config.seq_len - 1, config.cvae, generator=g)
    targets = torch.randint(0, config.vocab_size, (GLOBAL_BATCH, config.seq_len), generator=g)
    return labels, inputs, targets


def micro_batches(config, rank: int, world: int, start: int):
    """This rank's share of every global batch from `start` on, in micro-batches of one sample."""
    step = start
    while True:
        labels, inputs, targets = batch(step, config)
        for i in range(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world):
            yield labels[i: i + 1], inputs[i: i + 1], targets[i: i + 1]
        step += 1


def step_fn(model, b, step: int, total: int):
    labels, inputs, targets = b
    loss = F.cross_entropy(model(labels, inputs).flatten(0, 1), targets.flatten())
    return loss, {}


def trainer(model, optimizer, rank: int, world: int) -> Trainer:
    settings = LoopSettings(STEPS, GLOBAL_BATCH // world, CLIP, None, 0, 1)
    return Trainer(model, optimizer, None, LRSchedule(LR, STEPS, 1), step_fn, lambda b: b,
                   DistInfo(rank, world, 0, CPU), settings)


def train(model, optimizer, rank: int, world: int, start: int, end: int) -> list[dict]:
    t, batches = trainer(model, optimizer, rank, world), micro_batches(model.config, rank, world, start)
    return [t.train_step(step, batches) for step in range(start, end)]


def sharded_var(meta_device: bool) -> tuple[VAR, torch.optim.Optimizer]:
    """A fresh tiny VAR wrapped with FSDP2, or one built on the meta device for a checkpoint to fill."""
    quiet_view_warning()
    if meta_device:
        config = fresh_var().config
        with torch.device("meta"):
            model = no_drop_path(VAR(config))
        model = wrap_fsdp(model, mp_policy(), CPU).to_empty(device=CPU)
    else:
        model = wrap_fsdp(fresh_var(), mp_policy(), CPU)
    return model, build_optimizer(model, LR, 0.05)


def worker(rank: int, world: int, store: str, program: str, folder: Path) -> None:
    """'fresh': steps 0..STEPS with a sharded checkpoint and an export after SAVE_AT; 'resume': from that
    checkpoint to STEPS. Rank 0 saves the gathered weights and the metrics."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, optimizer = sharded_var(meta_device=program == "resume")
        out: dict = {}
        if program == "fresh":
            out["metrics"] = train(model, optimizer, rank, world, 0, SAVE_AT)
            save_sharded(folder / "ckpt", model, optimizer, {"step": SAVE_AT, "config": model.config.to_dict(),
                                                             "recipe": {}, "data": {}})
            out["at_save"] = export_full_state_dict(model)
        else:
            assert load_sharded(folder / "ckpt", model, optimizer)["step"] == SAVE_AT
            out["metrics"] = []
        out["metrics"] += train(model, optimizer, rank, world, SAVE_AT, STEPS)
        out["final"] = export_full_state_dict(model)
        if rank == 0:
            torch.save(out, folder / f"{program}.pt")
    finally:
        dist.destroy_process_group()


def spawn(program: str, folder: Path, world: int = 2) -> dict:
    store = folder / f"store_{program}"
    mp.spawn(worker, args=(world, str(store), program, folder), nprocs=world, join=True)
    return torch.load(folder / f"{program}.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One unsharded process, 2 sharded ranks uninterrupted (checkpoint at SAVE_AT), 2 ranks resumed from it."""
    folder = tmp_path_factory.mktemp("shard")
    model = fresh_var()
    optimizer = build_optimizer(model, LR, 0.05)
    metrics = train(model, optimizer, 0, 1, 0, STEPS)
    return {"folder": folder, "init": fresh_var().state_dict(), "one": {"metrics": metrics, "final": model.state_dict()},
            "fresh": spawn("fresh", folder), "resume": spawn("resume", folder)}


def assert_close_updates(a: dict, b: dict, init: dict, rtol: float) -> float:
    """Every parameter of a and b within rtol x the norm of its update from init, buffers equal; returns the
    worst ratio."""
    assert a.keys() == b.keys() == init.keys()
    worst, params = 0.0, {name for name, _ in fresh_var().named_parameters()}
    for k, v in a.items():
        if k in params:
            update = (v - init[k]).norm()
            assert update > 0, k
            ratio = float((b[k] - v).norm() / update)
            assert ratio <= rtol, (k, ratio)
            worst = max(worst, ratio)
        else:
            assert torch.equal(v, b[k]), k
    return worst


@pytest.mark.slow
def test_two_sharded_ranks_match_one_unsharded_process(runs):
    one, two = runs["one"], runs["fresh"]
    assert all(m["grad_norm"] > CLIP for m in one["metrics"])  # clipping acts on every step
    worst = assert_close_updates(one["final"], two["final"], runs["init"], UPDATE_RTOL)
    print(f"2 sharded ranks vs 1 process: worst |diff| / |update| = {worst:.2e}")
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(runs):
    fresh, resumed = runs["fresh"], runs["resume"]
    assert fresh["final"].keys() == resumed["final"].keys()
    assert all(torch.equal(v, resumed["final"][k]) for k, v in fresh["final"].items())
    assert [m["loss"] for m in resumed["metrics"]] == [m["loss"] for m in fresh["metrics"][SAVE_AT:]]


@pytest.mark.slow
def test_another_world_size_resumes_the_sharded_checkpoint(runs):
    """Written by 2 ranks, read by 1: DCP reshards, the weights come back exactly and training continues as the
    2-rank run does (within the sharding tolerance: the accumulation order differs)."""
    info = DistInfo(0, 1, 0, CPU)
    ensure_process_group(info)
    try:
        model, optimizer = sharded_var(meta_device=True)
        meta = load_sharded(runs["folder"] / "ckpt", model, optimizer)
        assert meta["world_size"] == 2 and meta["step"] == SAVE_AT
        loaded = export_full_state_dict(model)
        assert all(torch.equal(v, loaded[k]) for k, v in runs["fresh"]["at_save"].items())
        train(model, optimizer, 0, 1, SAVE_AT, STEPS)
        final = export_full_state_dict(model)
    finally:
        dist.destroy_process_group()
    assert_close_updates(runs["fresh"]["final"], final, runs["init"], UPDATE_RTOL)


@pytest.mark.slow
def test_exported_file_loads_strictly_in_the_official_layout(runs, tmp_path):
    final = runs["fresh"]["final"]
    assert final.keys() == fresh_var().state_dict().keys()
    assert all(isinstance(v, torch.Tensor) and type(v) is torch.Tensor for v in final.values())  # no DTensor
    export_weights(unsharded_var(fresh_var().config, final), tmp_path / "drafter.pth")
    model = load_var(tmp_path / "drafter.pth", depth=2)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_unsupported_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="--shard must be one of none, fsdp, got 'ddp'"):
        check_shard("ddp", None)
    with pytest.raises(ConfigError, match="--shard fsdp trains in bf16 or fp32"):
        check_shard("fsdp", torch.float16)
    check_shard("fsdp", torch.bfloat16)
    check_shard("none", torch.float16)


def test_a_folder_that_is_not_a_sharded_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a sharded training checkpoint"):
        read_meta(tmp_path)
    torch.save({"step": 1}, tmp_path / META_NAME)
    with pytest.raises(CheckpointError, match="lacks config, recipe, data, param_groups, world_size"):
        read_meta(tmp_path)


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint_found(tmp_path):
    assert sharded_checkpoint(tmp_path / "ckpt") is None
    (tmp_path / "ckpt.old").mkdir()
    torch.save({"step": 1}, tmp_path / "ckpt.old" / META_NAME)
    assert sharded_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt.old"
    (tmp_path / "ckpt").mkdir()
    torch.save({"step": 2}, tmp_path / "ckpt" / META_NAME)
    assert sharded_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt"


class Planted:
    """Unpickling this writes a file: the mark of code run by a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def planted_checkpoint(folder: Path, marker: Path) -> tuple[VAR, torch.optim.Optimizer]:
    """A one-process sharded model and optimizer, and their checkpoint in folder/ckpt with a pickled object in
    place of one weight."""
    model, optimizer = sharded_var(meta_device=False)
    save_sharded(folder / "ckpt", model, optimizer, {"step": 0, "config": {}, "recipe": {}, "data": {}})
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": {**model_sd, "pos_start": Planted(marker)}, "optimizer": optim_sd["state"]},
             storage_writer=dcp.FileSystemWriter(folder / "ckpt", overwrite=True))
    return model, optimizer


@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")
def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path):
    ensure_process_group(DistInfo(0, 1, 0, CPU))
    try:
        marker = tmp_path / "ran"
        model, optimizer = planted_checkpoint(tmp_path, marker)
        with pytest.raises(CheckpointError, match="entry model.pos_start is a pickled object"):
            load_sharded(tmp_path / "ckpt", model, optimizer)
        (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
        with pytest.raises(CheckpointError, match="is not a readable checkpoint index"):
            load_sharded(tmp_path / "ckpt", model, optimizer)
    finally:
        dist.destroy_process_group()
    assert not marker.exists()
