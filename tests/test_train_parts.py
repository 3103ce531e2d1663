"""Pieces of the training scripts: image folder and transforms, sharded sampler, optimizer groups, schedules."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import ConfigError, TrainConfig
from training.data import DataError, ImageFolder, ImageTransform, scan_image_folder
from training.optim import WARMUP_START, LRSchedule, param_groups, scaled_lr
from training.sampler import ShardedBatchSampler


def write_images(root, counts, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        d = root / f"n{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i}.JPEG")


def test_scan_sorts_classes_and_filters_extensions(tmp_path):
    for name in ("b_cls", "a_cls"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b_cls" / "x.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a_cls" / "y.jpeg")
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    classes, samples = scan_image_folder(tmp_path)
    assert classes == ["a_cls", "b_cls"]
    assert [(p.split("/")[-1], c) for p, c in samples] == [("y.jpeg", 0), ("x.PNG", 1)]


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.txt").write_text("")
    with pytest.raises(DataError, match=f"{tmp_path} has 1 class folders but no images"):
        scan_image_folder(tmp_path)


def test_transform_resizes_short_side_crops_and_scales():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))  # 30 wide, 20 high
    val = ImageTransform(8, train=False)(img, None)
    assert val.shape == (3, 8, 8) and val.min() >= -1 and val.max() <= 1
    mid = np.asarray(img.resize((13, 9), Image.LANCZOS), dtype=np.float32) / 255 * 2 - 1  # short side round(1.125*8)
    top, left = round((9 - 8) / 2), round((13 - 8) / 2)
    np.testing.assert_array_equal(val.permute(1, 2, 0).numpy(), mid[top:top + 8, left:left + 8])  # the same floats
    crops = {ImageTransform(8)(img, np.random.default_rng(s)).sum().item() for s in range(20)}
    assert len(crops) > 1  # random crops differ
    a = ImageTransform(8)(img, np.random.default_rng(3))
    assert torch.equal(a, ImageTransform(8)(img, np.random.default_rng(3)))
    flips = [ImageTransform(8, hflip=True)(img, np.random.default_rng(s)) for s in range(20)]
    plain = [ImageTransform(8)(img, np.random.default_rng(s)) for s in range(20)]
    flipped = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flips, plain)]
    assert 0 < sum(flipped) < 20


def test_samples_are_a_function_of_seed_epoch_and_index(tmp_path):
    write_images(tmp_path, [5, 5])
    data = ImageFolder(tmp_path, ImageTransform(8, hflip=True), seed=1, cond_drop=0.5)
    x, label, drop = data[(7, 2)]
    x2, label2, drop2 = data[(7, 2)]
    assert torch.equal(x, x2) and (label, drop) == (label2, drop2) == (1, drop)
    drops = [data[(i, e)][2] for i in range(10) for e in range(4)]
    assert 0 < sum(drops) < 40
    assert all(ImageFolder(tmp_path, ImageTransform(8), cond_drop=1.0)[(i, 0)][2] for i in range(10))
    assert not any(ImageFolder(tmp_path, ImageTransform(8), cond_drop=0.0)[(i, 0)][2] for i in range(10))
    assert not ImageFolder(tmp_path, ImageTransform(8, train=False), cond_drop=1.0)[(0, 0)][2]  # val: never


def test_sampler_shards_are_disjoint_and_union_is_the_global_batch():
    n, bs, accum, world = 37, 2, 3, 2
    single = iter(ShardedBatchSampler(n, bs * world, accum, 0, 1, seed=4))
    ranks = [iter(ShardedBatchSampler(n, bs, accum, r, world, seed=4)) for r in range(world)]
    spe = n // (bs * accum * world)
    seen = []
    for step in range(2 * spe + 1):  # crosses two epoch boundaries
        one = {k for _ in range(accum) for k in next(single)}
        parts = [[k for _ in range(accum) for k in next(it)] for it in ranks]
        assert all(len(p) == bs * accum for p in parts)
        assert not set(parts[0]) & set(parts[1])
        assert set(parts[0]) | set(parts[1]) == one
        assert {e for _, e in one} == {step // spe}
        seen.append(one)
    epoch0 = [i for s in seen[:spe] for i, _ in s]
    assert len(set(epoch0)) == len(epoch0) == spe * bs * accum * world  # no image twice within an epoch


def test_sampler_resumes_at_any_step():
    full = iter(ShardedBatchSampler(20, 2, 2, 1, 2, seed=0))
    batches = [next(full) for _ in range(2 * 7)]
    resumed = iter(ShardedBatchSampler(20, 2, 2, 1, 2, seed=0, start_step=3))
    assert [next(resumed) for _ in range(2 * 4)] == batches[2 * 3:]
    pos = ShardedBatchSampler(20, 2, 2, 1, 2).position(7)
    assert (pos.epoch, pos.step_in_epoch, pos.steps_per_epoch, pos.global_batch) == (3, 1, 2, 8)
    with pytest.raises(DataError, match="fewer than one global batch of 8"):
        ShardedBatchSampler(7, 2, 2, 0, 2)


def test_param_groups_exempt_biases_norms_embeddings_and_positions(pair):
    _, var = pair
    decay, no_decay = param_groups(var, 0.08)
    assert decay["weight_decay"] == 0.08 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in var.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"pos_start", "pos_1LC", "lvl_embed.weight", "class_emb.weight", "blocks.0.attn.scale_mul_1H11",
            "blocks.0.attn.q_bias", "head.bias", "word_embed.bias"} <= exempt
    assert decayed == {n for n, p in var.named_parameters() if p.ndim == 2 and n not in ("class_emb.weight", "lvl_embed.weight")}
    assert len(exempt) + len(decayed) == len(names)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_schedule_warms_up_then_decays_to_the_floor(kind):
    sched = LRSchedule(peak=1.0, total_steps=101, warmup_steps=10, kind=kind, min_ratio=0.01)
    assert sched(0) == pytest.approx(WARMUP_START)
    assert sched(5) == pytest.approx(WARMUP_START + (1 - WARMUP_START) * 0.5)
    assert sched(10) == pytest.approx(1.0) and sched(100) == pytest.approx(0.01)
    mid = 0.01 + 0.99 * (0.5 if kind == "linear" else 0.5 + 0.5 * math.cos(math.pi * 0.5))
    assert sched(55) == pytest.approx(mid)
    values = [sched(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert scaled_lr(1e-5, 1024) == pytest.approx(4e-5)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule(1.0, 10, 1, "step")


def batch_plan(batch_size, world_size, grad_accum, global_batch, default_global_batch=1024):
    config = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, global_batch=global_batch,
                         default_global_batch=default_global_batch)
    return config.batch_plan(world_size)


def test_batch_plan_reaches_the_global_batch():
    assert batch_plan(16, 8, None, None) == (8, 1024)
    assert batch_plan(4, 2, None, 16) == (2, 16)
    assert batch_plan(4, 2, 3, None) == (3, 24)
    assert batch_plan(4, 2, 3, 24) == (3, 24)
    assert batch_plan(4, 2, None, None, default_global_batch=None) == (1, 8)  # the from-scratch scripts' default
    with pytest.raises(ConfigError, match="not a multiple"):
        batch_plan(3, 1, None, 1024)
    with pytest.raises(ConfigError, match="!="):
        batch_plan(4, 2, 3, 16)


def test_drop_path_rises_over_the_blocks(pair):
    _, var = pair
    var.set_drop_path(0.2)
    assert [b.drop_path.p for b in var.blocks] == [0.0, 0.2] and var.config.drop_path_rate == 0.2
    var.set_drop_path(-1)
    assert var.blocks[-1].drop_path.p == pytest.approx(0.1 * 2 / 24)
