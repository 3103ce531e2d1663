"""What a training step is fed: crop offsets, flips, labels and the data order, checked against their definitions."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DataError, ImageFolder, ImageTransform
from training.losses import drafter_ce
from training.optim import LRSchedule
from training.sampler import ShardedBatchSampler


def coordinate_image(w: int, h: int) -> Image.Image:
    """Red = 20 x column, green = 20 x row: a crop's top-left pixel says where the crop was taken."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x * 20, y * 20, np.full_like(x, 255)], -1).astype(np.uint8))


def decode(t: torch.Tensor) -> tuple[int, int, bool]:
    """(top, left, flipped) of an ImageTransform output of coordinate_image."""
    px = (t + 1) / 2 * 255 / 20
    left, right, top = px[0, 0, 0].round().item(), px[0, 0, -1].round().item(), px[1, 0, 0].round().item()
    return int(top), int(min(left, right)), left > right


def test_random_crops_reach_every_offset_and_only_those():
    size = 8  # the short side is resized to round(1.125 * 8) = 9: a 12 x 9 image is kept as it is
    crops = [decode(ImageTransform(size)(coordinate_image(12, 9), np.random.default_rng(s))) for s in range(80)]
    assert {(t, l) for t, l, _ in crops} == {(t, l) for t in range(9 - size + 1) for l in range(12 - size + 1)}
    val = ImageTransform(size, train=False)(coordinate_image(12, 9), None)
    assert decode(val) == (0, 2, False) and val.min() == -1 and val.max() == 1  # centred; 0 -> -1, 255 -> 1


def test_flips_are_a_fair_coin_in_training_and_never_otherwise():
    img = coordinate_image(12, 9)
    flipped = [decode(ImageTransform(8, hflip=True)(img, np.random.default_rng(s)))[2] for s in range(60)]
    assert 15 < sum(flipped) < 45
    for transform in (ImageTransform(8), ImageTransform(8, train=False, hflip=True)):
        assert not any(decode(transform(img, np.random.default_rng(s)))[2] for s in range(30))


def test_labels_are_the_sorted_class_folders_and_an_empty_class_keeps_its_id(tmp_path):
    for name, n in (("c", 2), ("a", 1), ("b", 0)):
        (tmp_path / name).mkdir()
        for i in range(n):
            coordinate_image(12, 9).save(tmp_path / name / f"{i}.png")
    data = ImageFolder(tmp_path, ImageTransform(8))
    assert data.classes == ["a", "b", "c"]
    assert [data[(i, 0)][1] for i in range(len(data))] == [0, 2, 2]


def test_label_drop_follows_its_probability_in_training_only(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(4):
        coordinate_image(9, 9).save(tmp_path / "a" / f"{i}.png")
    drops = [ImageFolder(tmp_path, ImageTransform(8), cond_drop=0.25)[(i, e)][2] for i in range(4) for e in range(30)]
    assert 15 < sum(drops) < 45
    val = ImageFolder(tmp_path, ImageTransform(8, train=False), cond_drop=0.25)
    assert not any(val[(i, e)][2] for i in range(4) for e in range(10))


@pytest.mark.parametrize("error", [OSError, SyntaxError, ValueError])
def test_each_kind_of_unreadable_image_names_its_file(tmp_path, error):
    (tmp_path / "a").mkdir()
    coordinate_image(9, 9).save(tmp_path / "a" / "0.png")
    data = ImageFolder(tmp_path, ImageTransform(8))

    def broken(path):
        raise error("damaged")
    data.loader = broken
    with pytest.raises(DataError, match="0.png cannot be read as an image"):
        data[(0, 0)]


@pytest.mark.parametrize("n,bs,accum,world", [(37, 2, 3, 2), (10, 1, 1, 3), (16, 4, 1, 1)])
def test_the_stream_reads_each_epochs_own_permutation(n, bs, accum, world):
    """Step s reads epoch s // steps_per_epoch's permutation, global batch s % steps_per_epoch, rank r's slice."""
    G = bs * accum * world
    spe = n // G
    for rank in range(world):
        stream = iter(ShardedBatchSampler(n, bs, accum, rank, world, seed=3))
        for step in range(3 * spe + 1):
            epoch = step // spe
            perm = np.random.default_rng((3, epoch)).permutation(n)
            batch = perm[(step % spe) * G:][:G][rank * bs * accum:][:bs * accum].tolist()
            got = [next(stream) for _ in range(accum)]
            assert [i for mb in got for i, _ in mb] == batch and {e for mb in got for _, e in mb} == {epoch}


def test_crops_at_a_realistic_size_keep_the_resized_side_and_reach_every_offset():
    """At size 32 the short side is resized to round(1.125 * 32) = 36, so a 40 x 36 image is kept and cropped at
    tops 0..4 and lefts 0..8 (at size 8 a wrong ratio or range can round to the right one)."""
    x, y = np.meshgrid(np.arange(40), np.arange(36))
    img = Image.fromarray(np.stack([x * 6, y * 7, np.full_like(x, 255)], -1).astype(np.uint8))
    crops = set()
    for s in range(100):
        px = (ImageTransform(32)(img, np.random.default_rng(s)) + 1) / 2 * 255
        left, top = px[0, 0, 0].item() / 6, px[1, 0, 0].item() / 7
        assert left == pytest.approx(round(left), abs=1e-4) and top == pytest.approx(round(top), abs=1e-4)
        crops.add((round(top), round(left)))
    assert {t for t, _ in crops} == set(range(5)) and {l for _, l in crops} == set(range(9))


def test_cosine_decay_is_a_half_cosine_for_any_spelling_of_its_name():
    name = "".join(["cos", "ine"])  # a string built at run time, as argparse's are: not the interned literal
    sched = LRSchedule(peak=1.0, total_steps=9, warmup_steps=0, kind=name, min_ratio=0.0)
    for step in range(9):
        assert sched(step) == pytest.approx(0.5 + 0.5 * math.cos(math.pi * step / 8))


def test_drafter_ce_names_the_tokens_it_got_and_needs():
    with pytest.raises(ValueError, match="logits cover 4 tokens but scales 1..3 need 14"):
        drafter_ce(torch.zeros(2, 4, 7), torch.zeros(2, 30, dtype=torch.long), 3, (0, 1, 5, 14, 30))


def test_an_unreadable_file_is_named_once_with_the_reason(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_text("not an image")
    with pytest.raises(DataError) as info:
        ImageFolder(tmp_path, ImageTransform(8))[(0, 0)]
    message = str(info.value)
    assert message.count("cannot be read as an image") == 1 and "0.png" in message and "--resume auto" in message
