"""train_drafter.py / train_refiner.py end to end on tiny models and a tiny image folder (CPU)."""
import json
import multiprocessing
import re
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import train_drafter
import train_refiner
from code import var_generate
from conftest import ROOT
from tiny import tiny_pair, tiny_var_like
from two_ranks import N, args_for, run, sharded_argv, two_rank_worker
from models import VAR, build_var, load_vae, load_var
from training.data import ImageFolder, ImageTransform
from training.losses import RefinerLoss, drafter_ce
from training.optim import LRSchedule, scaled_lr
from training.tokens import make_batch
from utils.checkpoint import atomic_save


def write_folder(root, counts, seed):
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        (root / f"n{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):  # smooth-ish images of varied shapes, so that the tiny VQVAE sees structure
            h, w = 9 + i % 3, 12 - i % 2
            base = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
            img.save(root / f"n{c:03d}" / f"img{i}.JPEG", quality=95)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_assets")
    vae, var = tiny_pair(depth=2)
    teacher = tiny_var_like(vae, depth=3, seed=5)
    atomic_save(vae.state_dict(), root / "vae.pth")
    atomic_save(var.state_dict(), root / "d2.pth")
    atomic_save(teacher.state_dict(), root / "d3.pth")
    write_folder(root / "data" / "train", [4, 4, 4], seed=0)
    write_folder(root / "data" / "val", [1, 1, 1], seed=1)
    write_folder(root / "one_batch" / "train", [2, 2], seed=2)
    return root


def refiner_args(assets, out, *extra, **kw):
    return args_for(assets, out, "--teacher_depth", "3", "--teacher", str(assets / "d3.pth"), *extra, **kw)


def weights(path):
    return torch.load(path, weights_only=True)


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def fixed_batch(assets):
    """The one_batch images, centre-cropped, with their true labels: tokens and teacher-forcing inputs."""
    vae = load_vae(assets / "vae.pth", patch_nums=(1, 2, 3, 4))
    data = ImageFolder(assets / "one_batch" / "train", ImageTransform(8, train=False))
    imgs, labels, drops = zip(*(data[(i, 0)] for i in range(len(data))))
    return make_batch(vae, torch.stack(imgs), torch.tensor(labels), torch.tensor(drops), 10, torch.device("cpu"))


def test_drafter_overfits_one_batch(assets, tmp_path):
    overfit = ["--max_steps", "12", "--lr", "2", "--warmup_ratio", "0", "--min_lr_ratio", "1", "--cond_drop", "0",
               "--grad_accum", "1", "--batch_size", "4", "--drop_path", "0"]
    assert run(train_drafter, args_for(assets, tmp_path, *overfit, data="one_batch")) == 0
    b = fixed_batch(assets)
    offs = load_var(assets / "d2.pth").config.offsets

    @torch.no_grad()
    def loss(path):
        return drafter_ce(load_var(path)(b.labels_B, b.inputs, stop_scale=N), b.gt_BL, N, offs).item()

    before, after = loss(assets / "d2.pth"), loss(tmp_path / f"drafter_{N}.pth")
    assert after < 0.7 * before, (before, after)
    records = log_records(tmp_path)
    assert records[-1]["ce"] < records[0]["ce"] and "kd" not in records[0]


def test_refiner_overfits_one_batch(assets, tmp_path):
    overfit = ["--max_steps", "12", "--lr", "2", "--warmup_ratio", "0", "--min_lr_ratio", "1", "--cond_drop", "0",
               "--grad_accum", "1", "--batch_size", "4", "--drop_path", "0"]
    assert run(train_refiner, refiner_args(assets, tmp_path, *overfit, data="one_batch")) == 0
    b = fixed_batch(assets)
    teacher = load_var(assets / "d3.pth")
    loss_fn = RefinerLoss(N, teacher.config.offsets)

    @torch.no_grad()
    def kd(path):
        return loss_fn(load_var(path)(b.labels_B, b.inputs), teacher(b.labels_B, b.inputs), b.gt_BL, 1.0)[0].item()

    before, after = kd(assets / "d2.pth"), kd(tmp_path / f"refiner_{N}.pth")
    assert after < 0.7 * before, (before, after)
    records = log_records(tmp_path)
    assert [r["lambda"] for r in records] == pytest.approx([1 - s / 11 for s in range(12)])


@pytest.mark.parametrize("script", [train_drafter, train_refiner], ids=["drafter", "refiner"])
def test_resume_continues_exactly(assets, tmp_path, script):
    """4 steps straight == 2 steps, stop, resume, 2 steps: bitwise (same ops, same order, per-step seeds)."""
    make = args_for if script is train_drafter else refiner_args
    recipe = ["--max_steps", "4", "--hflip", "--cond_drop", "0.5", "--lr", "0.5", "--drop_path", "0.3",
              "--log_every", "2"]
    role = "drafter" if script is train_drafter else "refiner"
    assert run(script, make(assets, tmp_path / "straight", *recipe)) == 0
    assert run(script, make(assets, tmp_path / "split", *recipe, "--stop_at", "2")) == 0
    ckpt = torch.load(tmp_path / "split" / "ckpt_last.pth", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["data"]["step_in_epoch"] == 2 and ckpt["config"]["depth"] == 2
    assert not (tmp_path / "split" / f"{role}_{N}.pth").exists()  # stopped early: nothing exported yet
    assert run(script, make(assets, tmp_path / "split", *recipe, "--resume", "auto", "--num_workers", "1")) == 0
    straight, split = weights(tmp_path / "straight" / f"{role}_{N}.pth"), weights(tmp_path / "split" / f"{role}_{N}.pth")
    assert straight.keys() == split.keys()
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    assert not torch.equal(straight["head.weight"], weights(assets / "d2.pth")["head.weight"])
    a, b = log_records(tmp_path / "straight"), log_records(tmp_path / "split")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["step"] for r in a] == [2, 4]


def test_resume_refuses_a_different_recipe(assets, tmp_path, capsys):
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "2", "--stop_at", "1")) == 0
    ckpt = tmp_path / "ckpt_last.pth"
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "2", "--lr", "3e-4", "--resume", str(ckpt))) == 2
    assert f"{ckpt} was written by a different training recipe" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_match_one_process_and_sharded_runs_resume_exactly_and_at_another_world_size(assets, tmp_path,
                                                                                                capfd):
    """2 gloo ranks (one launch) == 1 process of the same global batch.
    DDP (2 ranks x 2 micro-batches of 1 vs 1 process x 4 micro-batches of 1): gradients are accumulated locally and
    all-reduced once, on the last micro-batch of each step; only rank 0 logs.
    --shard fsdp: within the sharding tolerance (losses, uneven sharded validation, weights); stopped and resumed ==
    uninterrupted, bit for bit; its step-2 checkpoint resumed by 1 process (DCP reshards) ends where the 2-rank run
    does; the export loads strictly."""
    assert run(train_drafter, sharded_argv(assets, tmp_path / "one")) == 0
    capfd.readouterr()
    # Not forked from this process (it ran autograd, whose threads a fork leaves broken): from a fresh forkserver that
    # imported what a rank needs once, for both ranks (two interpreter starts cost twice that).
    multiprocessing.get_context("forkserver").set_forkserver_preload(["two_ranks", "torch._dynamo"])
    mp.start_processes(two_rank_worker, args=(assets, tmp_path), nprocs=2, start_method="forkserver")
    err = capfd.readouterr().err
    assert "(1/GPU x 2 accum x 2 GPUs)" in err and err.count(f"exported {tmp_path / 'ddp'}") == 1  # rank 0 logs
    one, ddp = weights(tmp_path / "one" / f"drafter_{N}.pth"), weights(tmp_path / "ddp" / f"drafter_{N}.pth")
    init = weights(assets / "d2.pth")
    # The all-reduce sums gradients in another order than accumulation does, and Adam's first steps divide by
    # sqrt(v) ~ |g|, so a rounding-level change of a near-zero gradient can move that element by up to lr:
    # compare each tensor's update (final - initial) in norm, not elementwise.
    for k, v in one.items():
        if v.is_floating_point() and k != "attn_bias_for_masking":
            assert (ddp[k] - v).norm() <= 1e-2 * (v - init[k]).norm() + 1e-7, k
    losses_one = [r["loss"] for r in log_records(tmp_path / "one") if "loss" in r]
    assert [r["loss"] for r in log_records(tmp_path / "ddp") if "loss" in r] == pytest.approx(losses_one, rel=1e-5)
    assert (tmp_path / "two" / "ckpt_last.dcp").is_dir() and not (tmp_path / "two" / "ckpt_last.pth").exists()
    two = weights(tmp_path / "two" / f"drafter_{N}.pth")
    assert two.keys() == one.keys() and isinstance(load_var(tmp_path / "two" / f"drafter_{N}.pth", depth=2), VAR)

    def assert_close(a: dict, b: dict) -> float:  # within 1e-4 of each update, as the DDP test explains
        worst = 0.0
        for k, v in a.items():
            if v.is_floating_point() and k != "attn_bias_for_masking":
                assert (b[k] - v).norm() <= 1e-4 * (v - init[k]).norm() + 1e-7, k
                worst = max(worst, float((b[k] - v).norm() / (v - init[k]).norm()))
        return worst

    sharded_vs_one = assert_close(one, two)
    for key in ("loss", "val_loss"):
        expected = [r[key] for r in log_records(tmp_path / "one") if key in r]
        assert len(expected) == 3 and [r[key] for r in log_records(tmp_path / "two") if key in r] == \
            pytest.approx(expected, rel=1e-6)
    split = weights(tmp_path / "split" / f"drafter_{N}.pth")
    assert all(torch.equal(v, split[k]) for k, v in two.items())

    capfd.readouterr()
    assert run(train_drafter, sharded_argv(assets, tmp_path / "other", "--resume", "auto")) == 2
    assert f"{tmp_path / 'other' / 'ckpt_last.dcp'} is a sharded checkpoint: continue it with --shard fsdp" in \
        capfd.readouterr().err
    assert run(train_drafter, sharded_argv(assets, tmp_path / "other", "--shard", "fsdp", "--resume", "auto")) == 0
    err = capfd.readouterr().err
    assert "(1/GPU x 4 accum x 1 GPUs)" in err and "written by 2 processes; resharded for 1" in err
    resharded = assert_close(two, weights(tmp_path / "other" / f"drafter_{N}.pth"))
    print(f"worst |diff| / |update|: 2 sharded ranks vs 1 process {sharded_vs_one:.1e}, resumed by 1 process vs "
          f"2 ranks {resharded:.1e}")


def test_a_sharded_refiner_in_one_process_equals_the_unsharded_one(assets, tmp_path):
    """FSDP2 over one process (no torchrun) with the frozen teacher left whole: the same run, bit for bit."""
    for out, extra in (("plain", ()), ("sharded", ("--shard", "fsdp"))):
        assert run(train_refiner, refiner_args(assets, tmp_path / out, "--max_steps", "2", *extra)) == 0
    a, b = (weights(tmp_path / d / f"refiner_{N}.pth") for d in ("plain", "sharded"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "sharded" / "ckpt_last.dcp" / "meta.pth").is_file()


def test_exported_weights_load_and_generate(assets, tmp_path):
    assert run(train_refiner, refiner_args(assets, tmp_path, "--max_steps", "1")) == 0
    exported = weights(tmp_path / f"refiner_{N}.pth")
    reference = tiny_pair(depth=2)[1].state_dict()
    assert exported.keys() == reference.keys()
    assert all(v.dtype == reference[k].dtype and v.shape == reference[k].shape for k, v in exported.items())
    vae = load_vae(assets / "vae.pth", patch_nums=(1, 2, 3, 4))
    var = load_var(tmp_path / f"refiner_{N}.pth", depth=2)
    images = var_generate(var, vae, [0, 3], seed=0)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    ckpt = torch.load(tmp_path / "ckpt_last.pth", weights_only=True)  # plain containers and tensors only
    assert ckpt["role"] == "refiner" and ckpt["recipe"]["total_steps"] == 1 and ckpt["scaler"] == {}
    assert isinstance(load_var(tmp_path / "ckpt_last.pth"), VAR)  # the training checkpoint loads too


def test_missing_or_empty_data_folder_is_a_clear_error(assets, tmp_path, capsys):
    assert run(train_drafter, args_for(assets, tmp_path / "o1", data="nowhere")) == 2
    assert f"data folder {assets / 'nowhere' / 'train'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "train" / "n01").mkdir(parents=True)
    assert run(train_drafter, args_for(assets, tmp_path / "o2", data=tmp_path / "empty")) == 2
    assert f"{tmp_path / 'empty' / 'train'} has 1 class folders but no images" in capsys.readouterr().err


def test_wrong_depths_and_draft_steps_are_clear_errors(assets, tmp_path, capsys):
    argv = args_for(assets, tmp_path)
    argv[argv.index("--init") + 1] = str(assets / "d3.pth")
    assert run(train_drafter, argv) == 2
    assert f"{assets / 'd3.pth'} holds a depth-3 VAR but depth 2 was requested" in capsys.readouterr().err
    assert run(train_refiner, refiner_args(assets, tmp_path, "--teacher_depth", "4")) == 2
    assert f"{assets / 'd3.pth'} holds a depth-3 VAR but depth 4" in capsys.readouterr().err
    assert run(train_drafter, args_for(assets, tmp_path, "--draft_steps", "5")) == 2
    assert "--draft_steps must be in 1..4 for the drafter of a 4-scale model" in capsys.readouterr().err
    assert run(train_refiner, refiner_args(assets, tmp_path, "--draft_steps", "4")) == 2
    assert "--draft_steps must be in 1..3 for the refiner" in capsys.readouterr().err


def test_a_drafter_on_every_scale_is_plain_var_fine_tuning(assets, tmp_path):
    """N = K: cross-entropy on all scales, the objective of VAR's pre-training (the miniature's control)."""
    assert run(train_drafter, args_for(assets, tmp_path, "--draft_steps", "4", "--max_steps", "1", "--cond_drop",
                                       "0", "--grad_accum", "1", "--batch_size", "12")) == 0
    b = fixed_batch(assets)
    full = torch.nn.functional.cross_entropy(load_var(assets / "d2.pth")(b.labels_B, b.inputs).flatten(0, 1),
                                             b.gt_BL.flatten())
    assert drafter_ce(load_var(assets / "d2.pth")(b.labels_B, b.inputs), b.gt_BL, 4, (0, 1, 5, 14, 30)) == full
    assert (tmp_path / "drafter_4.pth").is_file()


def test_a_training_error_is_one_line_without_a_time(assets, tmp_path, capsys):
    assert run(train_drafter, args_for(assets, tmp_path, data="nowhere")) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"error: data folder {assets / 'nowhere' / 'train'} does not exist" in err and len(err) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is absent")
def test_training_takes_the_inference_device_vocabulary(assets, tmp_path, capsys):
    assert run(train_drafter, args_for(assets, tmp_path, "--device", "cuda:1")) == 2
    assert capsys.readouterr().err == "error: --device cuda:1: CUDA is not available here; use --device cpu\n"
    assert run(train_drafter, args_for(assets, tmp_path, "--device", "mps")) == 2
    assert "only cuda, cuda:N and cpu are supported" in capsys.readouterr().err


def test_a_cuda_index_beyond_the_machines_devices_is_refused(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert run(train_drafter, args_for(assets, tmp_path, "--device", "cuda:2")) == 2
    assert capsys.readouterr().err == "error: --device cuda:2: this machine has 2 CUDA devices (cuda:0..cuda:1)\n"


def test_cli_exit_code_and_message(assets, tmp_path, capsys, monkeypatch):
    """The scripts' __main__ blocks, run as `python train_drafter.py ...` runs them (a fresh interpreter running
    every script is tests/test_scripts.py's)."""
    def main(script, *argv):
        monkeypatch.setattr(sys, "argv", [script, *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        return e.value.code, capsys.readouterr()

    code, out = main("train_drafter.py", *args_for(assets, tmp_path, data="nowhere"))
    assert code == 2 and "nowhere" in out.err and "Traceback" not in out.err
    code, out = main("train_refiner.py", "--help")
    assert code == 0 and "KL(teacher || student)" in out.out and "lr x global_batch / 256" in out.out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(assets, tmp_path, monkeypatch, capsys):
    real = train_drafter.drafter_ce
    calls = []

    def poisoned(*a):  # the 7th micro-batch (step 3, grad_accum 2) turns NaN
        calls.append(1)
        return real(*a) * (float("nan") if len(calls) >= 7 else 1.0)

    monkeypatch.setattr(train_drafter, "drafter_ce", poisoned)
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "6", "--save_every", "2")) == 1
    err = capsys.readouterr().err
    assert "the loss is nan in optimizer step 4" in err and str(tmp_path / "ckpt_last.pth") in err
    ckpt = torch.load(tmp_path / "ckpt_last.pth", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for k, v in ckpt["model"].items() if k != "attn_bias_for_masking")
    assert not (tmp_path / f"drafter_{N}.pth").exists()
    monkeypatch.setattr(train_drafter, "drafter_ce", real)  # the real thing: a learning rate of 1e30 diverges
    huge = args_for(assets, tmp_path / "huge", "--max_steps", "6", "--save_every", "1", "--lr", "1e30")
    assert run(train_drafter, huge) == 1
    assert re.search(r"the (loss|gradient norm) is (nan|inf) in optimizer step 2", capsys.readouterr().err)
    assert torch.load(tmp_path / "huge" / "ckpt_last.pth", weights_only=True)["step"] == 1


def test_schedule_flags_drive_the_logged_lr(assets, tmp_path):
    flags = ["--max_steps", "5", "--lr", "0.1", "--schedule", "cosine", "--warmup_ratio", "0.4", "--min_lr_ratio",
             "0.2", "--wd", "0.3", "--clip", "0"]
    assert run(train_drafter, args_for(assets, tmp_path, *flags)) == 0
    sched = LRSchedule(scaled_lr(0.1, 4), 5, 2, "cosine", 0.2)
    assert [r["lr"] for r in log_records(tmp_path)] == pytest.approx([sched(s) for s in range(5)])
    groups = torch.load(tmp_path / "ckpt_last.pth", weights_only=True)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0] and groups[0]["betas"] == (0.9, 0.95)


def test_epochs_set_the_run_length_and_clip_limits_the_update(assets, tmp_path):
    # 12 images, global batch 4: 3 steps per epoch, --epochs 0.7 -> round(2.1) = 2 steps
    assert run(train_drafter, args_for(assets, tmp_path / "a", "--epochs", "0.7", "--lr", "0.5", "--wd", "0")) == 0
    assert [r["step"] for r in log_records(tmp_path / "a")] == [1, 2]
    assert run(train_drafter, args_for(assets, tmp_path / "b", "--epochs", "0.7", "--lr", "0.5", "--wd", "0", "--clip", "1e-12")) == 0
    init = weights(assets / "d2.pth")["head.weight"]
    moved = (weights(tmp_path / "a" / f"drafter_{N}.pth")["head.weight"] - init).abs().max()
    clipped = (weights(tmp_path / "b" / f"drafter_{N}.pth")["head.weight"] - init).abs().max()
    assert clipped < 1e-2 * moved  # a gradient norm of 1e-12 is far below Adam's eps: the weights barely move


def test_seed_fixes_the_run(assets, tmp_path):
    flags = ["--max_steps", "1", "--hflip", "--cond_drop", "0.5", "--lr", "0.5"]
    by_name = ["--init", "d2.pth", "--ckpt_dir", str(assets)]  # --init by name, found in --ckpt_dir
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        resume = ["--resume", "auto"] if name == "b" else []  # nothing to resume in a fresh folder: starts anew
        assert run(train_drafter, args_for(assets, tmp_path / name, *flags, "--seed", seed, *by_name, *resume)) == 0
    a, b, c = (weights(tmp_path / n / f"drafter_{N}.pth")["head.weight"] for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_runs(assets, tmp_path, dtype):
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "2", "--dtype", dtype, "--lr", "0.5")) == 0
    ckpt = torch.load(tmp_path / "ckpt_last.pth", weights_only=True)
    assert ("scale" in ckpt["scaler"]) == (dtype == "fp16")  # fp16 trains with a gradient scaler
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    assert all(np.isfinite(r["loss"]) for r in log_records(tmp_path))


def test_refiner_flags_validation_and_loss_mix(assets, tmp_path):
    flags = ["--max_steps", "2", "--ce_weight", "0.5", "--kd_temperature", "2", "--eval_every", "1"]
    assert run(train_refiner, refiner_args(assets, tmp_path, *flags)) == 0
    records = log_records(tmp_path)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [1, 2] and all(r["val_kd"] > 0 for r in val)
    for r in train + [{k[4:]: v for k, v in r.items() if k.startswith("val_")} for r in val]:
        assert r["loss"] == pytest.approx(r["kd"] + 0.5 * r["ce"], rel=1e-5)
    with pytest.raises(SystemExit):  # no loss left
        train_refiner.parse_args(refiner_args(assets, tmp_path, "--kd_weight", "0"))


def test_refiner_without_teacher_sees_the_same_batches(assets, tmp_path):
    """--kd_weight 0 --ce_weight 1 (the miniature's control): no teacher is read, and the run's data order is the
    distilled refiner's: the same cross-entropy at the first step, from the same initial weights."""
    assert run(train_refiner, refiner_args(assets, tmp_path / "kd", "--max_steps", "2")) == 0
    argv = refiner_args(assets, tmp_path / "ce", "--max_steps", "2", "--kd_weight", "0", "--ce_weight", "1")
    argv[argv.index("--teacher") + 1] = str(tmp_path / "missing.pth")
    assert run(train_refiner, argv) == 0
    kd, ce = ([r for r in log_records(tmp_path / d) if "loss" in r] for d in ("kd", "ce"))
    assert "kd" not in ce[0] and ce[0]["loss"] == pytest.approx(ce[0]["ce"])
    assert ce[0]["ce"] == pytest.approx(kd[0]["ce"], rel=1e-6)


# ---- bad input and interrupted runs (issue 12) -----------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_an_unreadable_training_image_stops_the_run_with_its_name(assets, tmp_path, capsys, workers, damage):
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    bad = data / "train" / "n001" / "img2.JPEG"
    bad.write_bytes(bad.read_bytes()[:100] if damage == "truncated" else b"not an image at all\n")
    argv = args_for(assets, tmp_path / "out", "--max_steps", "3", "--num_workers", workers, data=data)
    assert run(train_drafter, argv) == 2
    assert not multiprocessing.active_children()  # the loader's worker stopped with the run, not at a later gc
    err = capsys.readouterr().err
    assert f"error: {bad} cannot be read as an image" in err and "replace it with a readable image" in err
    assert "Traceback" not in err and err.count("error: ") == 1


def test_a_teacher_or_init_that_does_not_fit_the_vqvae_is_a_one_line_error(assets, tmp_path, capsys):
    kw = dict(width=64, heads=2, num_classes=10, vocab_size=64, cvae=8, patch_nums=(1, 2, 3, 4))
    other = build_var(3, **{**kw, "vocab_size": 32})  # another vocabulary
    classes = build_var(3, **{**kw, "num_classes": 20})  # another class count
    scales = build_var(2, **{**kw, "patch_nums": (1, 2, 4)})  # another pyramid
    for name, model in (("vocab.pth", other), ("classes.pth", classes), ("scales.pth", scales)):
        atomic_save(model.state_dict(), tmp_path / name)
    assert run(train_refiner, refiner_args(assets, tmp_path / "a", "--teacher", str(tmp_path / "vocab.pth"))) == 2
    err = capsys.readouterr().err
    assert f"the teacher ({tmp_path / 'vocab.pth'}) does not fit the VQVAE: model 1 (depth 3) has vocab_size=32" in err
    assert run(train_refiner, refiner_args(assets, tmp_path / "b", "--teacher", str(tmp_path / "classes.pth"))) == 2
    assert "model 1 has 20 classes but model 0 has 10" in capsys.readouterr().err
    argv = args_for(assets, tmp_path / "c")
    argv[argv.index("--init") + 1] = str(tmp_path / "scales.pth")
    assert run(train_drafter, argv) == 2
    err = capsys.readouterr().err
    assert "patch_nums" in err and "Traceback" not in err


def test_temporary_files_of_a_killed_run_are_removed_and_the_log_does_not_repeat_steps(assets, tmp_path, capsys):
    recipe = ["--max_steps", "4", "--log_every", "1", "--save_every", "2"]
    assert run(train_drafter, args_for(assets, tmp_path, *recipe, "--stop_at", "2")) == 0
    with open(tmp_path / "log.jsonl", "a") as f:  # steps 3 and 4 were logged, then the kill came before a save
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + json.dumps({"step": 4, "loss": 9.0}) + "\n{\"step")
    (tmp_path / ".ckpt_last.pth.abc123xy.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert run(train_drafter, args_for(assets, tmp_path, *recipe, "--resume", "auto")) == 0
    assert not list(tmp_path.glob(".*.tmp"))
    err = capsys.readouterr().err
    assert "removed 1 temporary files an interrupted run left" in err and ".ckpt_last.pth.abc123xy.tmp" in err
    assert "resuming at step 2: dropped 3 lines" in err
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2, 3, 4] and 9.0 not in [r["loss"] for r in
                                                                                   log_records(tmp_path)]


def test_a_fresh_run_does_not_overwrite_another_runs_checkpoint_or_log(assets, tmp_path, capsys):
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "3", "--stop_at", "2")) == 0
    before = (tmp_path / "ckpt_last.pth").read_bytes(), (tmp_path / "log.jsonl").read_text()
    assert run(train_drafter, args_for(assets, tmp_path, "--max_steps", "3")) == 2
    assert f"{tmp_path} holds the checkpoint of another run" in capsys.readouterr().err
    assert ((tmp_path / "ckpt_last.pth").read_bytes(), (tmp_path / "log.jsonl").read_text()) == before


def test_a_resume_on_another_data_folder_is_refused(assets, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    argv = args_for(assets, tmp_path / "out", "--max_steps", "3", "--batch_size", "1", "--grad_accum", "2", data=data)
    assert run(train_drafter, argv + ["--stop_at", "1"]) == 0
    (data / "train" / "n001" / "img2.JPEG").unlink()  # every later step would see other images
    assert run(train_drafter, argv + ["--resume", "auto"]) == 2
    assert "images: checkpoint 12 vs now 11" in capsys.readouterr().err


def test_unusable_output_folder_and_non_finite_flags(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run(train_drafter, args_for(assets, tmp_path / "file" / "out")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    for flag, value in (("--epochs", "inf"), ("--wd", "nan"), ("--lr", "inf"), ("--clip", "nan")):
        with pytest.raises(SystemExit) as e:
            train_drafter.parse_args(args_for(assets, tmp_path, flag, value))
        assert e.value.code == 2 and f"{flag} must be a finite number" in capsys.readouterr().err
