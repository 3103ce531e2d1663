"""Sharded training's pieces (training/shard.py, training/shard_ckpt.py) in one process with gloo: the twin and
its gathered weights, a DCP checkpoint's round trip, clear errors, unsafe checkpoints refused. Two ranks against one
process, exact resume and resharding are tests/test_train.py's, on the script."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from tiny import tiny_pair
from models import VAR
from training.config import ConfigError
from training.optim import build_optimizer
from training.shard import check_shard, ensure_process_group, gather_into, sharded_twin
from training.shard_ckpt import META_NAME, load_sharded, read_meta, save_sharded, sharded_checkpoint
from utils.checkpoint import CheckpointError
from utils.dist import DistInfo

CPU = torch.device("cpu")


def fresh_var() -> VAR:
    return tiny_pair(depth=2)[1].train()


def sharded_var(fill: bool) -> tuple[VAR, torch.optim.Optimizer]:
    """A sharded twin of a fresh tiny VAR, or an empty one for a checkpoint to fill."""
    model = sharded_twin(fresh_var(), CPU, fill)
    return model, build_optimizer(model, 1e-2, 0.05)


def save(model: VAR, optimizer, folder: Path, step: int) -> None:
    save_sharded(folder / "ckpt", model=model, optimizer=optimizer, step=step, data={"epoch": 0}, recipe={},
                 config=model.config.to_dict())


@pytest.fixture
def world_of_one():
    ensure_process_group(DistInfo(0, 1, 0, CPU))
    yield
    dist.destroy_process_group()


def test_a_sharded_step_saved_and_loaded_gathers_back_into_a_plain_model(tmp_path, world_of_one):
    plain = fresh_var()
    model, optimizer = sharded_var(fill=True)
    gather_into(model, plain)
    assert all(torch.equal(v, fresh_var().state_dict()[k]) for k, v in plain.state_dict().items())
    model(torch.tensor([1]), torch.randn(1, model.config.seq_len - 1, model.config.cvae)).square().mean().backward()
    optimizer.step()
    save(model, optimizer, tmp_path, 1)
    loaded, loaded_opt = sharded_var(fill=False)
    assert load_sharded(tmp_path / "ckpt", loaded, loaded_opt)["step"] == 1
    moments = [(s["exp_avg"].to_local(), s["exp_avg_sq"].to_local()) for s in optimizer.state_dict()["state"].values()]
    reloaded_moments = [(s["exp_avg"].to_local(), s["exp_avg_sq"].to_local())
                        for s in loaded_opt.state_dict()["state"].values()]
    assert any(m.abs().sum() > 0 for m, _ in moments) and len(reloaded_moments) == len(moments)
    assert all(torch.equal(a, b) for pair, other in zip(moments, reloaded_moments) for a, b in zip(pair, other))
    trained, reloaded = fresh_var(), fresh_var()
    gather_into(model, trained)
    gather_into(loaded, reloaded)
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in trained.state_dict().items())
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in trained.state_dict().items())


def test_unsupported_settings_are_clear_errors():
    var, vae = fresh_var(), tiny_pair(depth=2)[0]
    with pytest.raises(ConfigError, match="--shard must be one of none, fsdp, got 'ddp'"):
        check_shard("ddp", var, None, "drafter")
    with pytest.raises(ConfigError, match="--shard fsdp trains in bf16 or fp32"):
        check_shard("fsdp", var, torch.float16, "drafter")
    with pytest.raises(ConfigError, match="--shard fsdp shards VAR models .*; train the vqvae without it"):
        check_shard("fsdp", vae, None, "vqvae")
    check_shard("fsdp", var, torch.bfloat16, "drafter")
    check_shard("none", vae, torch.float16, "vqvae")


def test_a_folder_that_is_not_a_sharded_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a sharded training checkpoint"):
        read_meta(tmp_path)
    torch.save({"step": 1}, tmp_path / META_NAME)
    with pytest.raises(CheckpointError, match="lacks config, recipe, data, rng, param_groups, world_size"):
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
    model, optimizer = sharded_var(fill=True)
    save(model, optimizer, folder, 0)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": {**model_sd, "pos_start": Planted(marker)}, "optimizer": optim_sd["state"]},
             storage_writer=dcp.FileSystemWriter(folder / "ckpt", overwrite=True))
    return model, optimizer


@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")
def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path, world_of_one):
    marker = tmp_path / "ran"
    model, optimizer = planted_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError, match="entry model.pos_start is a pickled object"):
        load_sharded(tmp_path / "ckpt", model, optimizer)
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointError, match="is not a readable checkpoint index"):
        load_sharded(tmp_path / "ckpt", model, optimizer)
    assert not marker.exists()
