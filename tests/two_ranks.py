"""What one rank of a two-process training run does (tests/test_train.py starts the ranks from a forkserver that
preloads this module): it imports only what a rank needs."""
import os
import shutil

import torch.distributed as dist

import train_drafter
from cli.args import exit_code

N = 2  # draft steps of the tiny 4-scale models


def args_for(assets, out, *extra, data="data"):
    return ["--depth", "2", "--draft_steps", str(N), "--data_path", str(assets / data), "--init",
            str(assets / "d2.pth"), "--vae", str(assets / "vae.pth"), "--output_dir", str(out), "--device", "cpu",
            "--num_workers", "0", "--batch_size", "2", "--grad_accum", "2", "--log_every", "1", "--save_every", "0",
            *extra]


def run(script, argv) -> int:
    return exit_code(script.main, script.parse_args(argv))


def sharded_argv(assets, out, *extra):
    """3 steps of global batch 4, validation after each: 3 images, 2 on rank 0 and 1 on rank 1."""
    a = args_for(assets, out, "--max_steps", "3", "--hflip", "--cond_drop", "0.5", "--lr", "0.5", "--drop_path", "0",
                 "--batch_size", "1", "--eval_every", "1", *extra)
    a[a.index("--grad_accum"): a.index("--grad_accum") + 2] = ["--global_batch", "4"]
    return a


def two_rank_worker(rank: int, assets, tmp_path) -> None:
    """One rank of 2 (gloo), as torchrun starts it: a DDP run ('ddp'), an uninterrupted --shard fsdp run ('two'),
    then one stopped after step 2 ('split', its checkpoint copied to 'other') and resumed."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    runs = [("ddp",), ("two", "--shard", "fsdp"), ("split", "--shard", "fsdp", "--stop_at", "2"),
            ("split", "--shard", "fsdp", "--resume", "auto")]
    for i, (out, *extra) in enumerate(runs):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{i}'}", rank=rank, world_size=2)
        assert run(train_drafter, sharded_argv(assets, tmp_path / out, "--threads", "1", *extra)) == 0
        if rank == 0 and "--stop_at" in extra:
            shutil.copytree(tmp_path / "split" / "ckpt_last.dcp", tmp_path / "other" / "ckpt_last.dcp")
