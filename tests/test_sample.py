"""sample_CoDe.py: the same images whatever the batch size, process count or interruptions; a valid .npz."""
import os
import subprocess
import sys

import numpy as np
import pytest

import sample_CoDe
from cli.args import UsageError
from cli.samples import ImageKey, MissingImagesError, image_seed, plan, write_npz
from code import collaborative_generate
from conftest import ROOT
from models import load_vae, load_var
from tiny_checkpoints import hub, load_published, one_thread, published_ckpts, small_ckpts  # noqa: F401
from utils.images import read_png, to_uint8

CLASSES, PER_CLASS = "0-2,5", 3  # 12 images


def small_argv(ckpts, out, *extra):
    return ["--drafter_ckpt", str(ckpts["drafter"]), "--refiner_ckpt", str(ckpts["refiner"]), "--vae_ckpt",
            str(ckpts["vae"]), "--draft_steps", "2", "--classes", CLASSES, "--per_class", str(PER_CLASS),
            "--output_path", str(out), "--device", "cpu", *extra]


def sample(argv):
    return sample_CoDe.main(sample_CoDe.parse_args(argv))


def pngs(folder):
    return sorted(p.name for p in (folder / "images").iterdir())


@pytest.fixture(scope="module")
def reference(small_ckpts, tmp_path_factory):
    """An uninterrupted single-process run with batch size 3: the .npz bytes every other run must give."""
    out = tmp_path_factory.mktemp("reference")
    npz = sample(small_argv(small_ckpts, out, "--batch_size", "3"))
    return out, npz.read_bytes()


def test_npz_is_the_evaluator_format_in_class_index_order(reference, small_ckpts):
    out, _ = reference
    arr = np.load(out / "samples_12x8x8x3.npz")["arr_0"]
    assert arr.shape == (12, 8, 8, 3) and arr.dtype == np.uint8 and arr.max() > arr.min()
    names = [f"{c:04d}_{i:04d}.png" for c in (0, 1, 2, 5) for i in range(3)]
    assert pngs(out) == names
    assert all(np.array_equal(a, read_png(out / "images" / n)) for a, n in zip(arr, names))
    assert len({a.tobytes() for a in arr}) == 12


def test_each_image_is_generated_alone_from_its_own_seed(reference, small_ckpts):
    """As published: image i of class c is class c generated alone with seed i (for --seed 0)."""
    out, _ = reference
    arr = np.load(out / "samples_12x8x8x3.npz")["arr_0"]
    drafter, refiner = load_var(small_ckpts["drafter"]).eval(), load_var(small_ckpts["refiner"]).eval()
    vae = load_vae(small_ckpts["vae"], patch_nums=drafter.config.patch_nums)
    for row, key in [(0, ImageKey(0, 0)), (5, ImageKey(1, 2)), (10, ImageKey(5, 1))]:
        image = collaborative_generate(drafter, refiner, vae, [key.cls], draft_steps=2, seed=key.index, cfg=1.5,
                                       top_k=600, top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0])
        assert np.array_equal(arr[row], to_uint8(image)[0])
    assert image_seed(3, ImageKey(7, 2)) == 3 * 2**32 + 2


def test_seed_and_dtype_flags(small_ckpts, tmp_path):
    one = ["--classes", "4", "--per_class", "1"]
    seeded = np.load(sample(small_argv(small_ckpts, tmp_path / "s1", *one, "--seed", "1")))["arr_0"]
    drafter, refiner = load_var(small_ckpts["drafter"]).eval(), load_var(small_ckpts["refiner"]).eval()
    vae = load_vae(small_ckpts["vae"], patch_nums=drafter.config.patch_nums)
    image = collaborative_generate(drafter, refiner, vae, [4], draft_steps=2, seed=2**32, cfg=1.5, top_k=600,
                                   top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0])
    assert np.array_equal(seeded[0], to_uint8(image)[0])
    fp32 = np.load(sample(small_argv(small_ckpts, tmp_path / "fp32", *one)))["arr_0"]
    bf16 = np.load(sample(small_argv(small_ckpts, tmp_path / "bf16", *one, "--dtype", "bf16")))["arr_0"]
    assert bf16.shape == fp32.shape == (1, 8, 8, 3) and not np.array_equal(bf16, fp32)
    assert "bfloat16" in (tmp_path / "bf16" / "run.json").read_text()


def test_batch_size_does_not_change_the_images(reference, small_ckpts, tmp_path):
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "5"))
    assert npz.read_bytes() == reference[1]


def test_resume_after_an_interruption_gives_the_same_npz(reference, small_ckpts, tmp_path):
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "4"))
    images = tmp_path / "images"
    kept = {p.name: p.stat().st_mtime_ns for p in images.iterdir() if p.name[:4] in ("0000", "0005")}
    for p in list(images.iterdir()):
        if p.name[:4] in ("0001", "0002"):
            p.unlink()  # as if killed before these were written
    (images / ".0001_0000.png.abc123.tmp").write_bytes(b"half a png")
    npz.unlink()
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "2"))
    assert npz.read_bytes() == reference[1]
    assert not list(images.glob(".*"))
    assert {n: (images / n).stat().st_mtime_ns for n in kept} == kept  # finished images were not redone


def test_other_settings_are_refused_and_delete_nothing(reference, small_ckpts, tmp_path):
    sample(small_argv(small_ckpts, tmp_path, "--per_class", "1"))
    before = pngs(tmp_path)
    with pytest.raises(UsageError, match=r"other settings \(seed: 0 in the folder, 1 now\)"):
        sample(small_argv(small_ckpts, tmp_path, "--per_class", "1", "--seed", "1"))
    with pytest.raises(UsageError, match=r"top_p: 0.96 in the folder, 0.9 now"):
        sample(small_argv(small_ckpts, tmp_path, "--per_class", "1", "--top_p", "0.9"))
    assert pngs(tmp_path) == before
    # more images per class with the same settings is a resume: the first ones are kept
    npz = sample(small_argv(small_ckpts, tmp_path))
    assert npz.read_bytes() == reference[1]


def test_a_missing_image_at_assembly_is_an_error_that_keeps_the_rest(reference, small_ckpts, tmp_path, monkeypatch):
    real_save = sample_CoDe.save_png

    def save_all_but_one(image, path):
        if path.name != "0002_0001.png":
            real_save(image, path)

    monkeypatch.setattr(sample_CoDe, "save_png", save_all_but_one)
    with pytest.raises(MissingImagesError, match=r"1 of 12 images are missing \(e.g. .*0002_0001.png\): rerun"):
        sample(small_argv(small_ckpts, tmp_path))
    assert len(pngs(tmp_path)) == 11 and not list(tmp_path.glob("*.npz"))
    monkeypatch.setattr(sample_CoDe, "save_png", real_save)
    assert sample(small_argv(small_ckpts, tmp_path)).read_bytes() == reference[1]


def test_write_npz_refuses_images_of_different_sizes(tmp_path):
    from utils.images import save_png
    (tmp_path / "images").mkdir()
    keys = plan([0], 2)
    save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "images" / keys[0].filename)
    save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "images" / keys[1].filename)
    with pytest.raises(UsageError, match="the folder mixes runs"):
        write_npz(tmp_path / "images", keys, tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*"))


def test_bad_inputs(small_ckpts, tmp_path):
    with pytest.raises(UsageError, match="--classes: class 10 is not in 0..9"):
        sample(small_argv(small_ckpts, tmp_path, "--classes", "9-10"))
    with pytest.raises(UsageError, match="--seed must be below 2"):
        sample(small_argv(small_ckpts, tmp_path, "--seed", str(2**32)))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write to the output folder"):
        sample(small_argv(small_ckpts, tmp_path / "file" / "out"))
    for argv in (["--per_class", "0"], ["--batch_size", "-2"], ["--classes", "5-2"], ["--draft_steps", "-1"]):
        with pytest.raises(SystemExit) as e:
            sample_CoDe.parse_args(argv)
        assert e.value.code == 2


def test_published_names_and_draft_steps(hub, tmp_path):
    npz = sample(["--drafter_depth", "30", "--refiner_depth", "16", "--draft_steps", "8", "--classes", "3",
                  "--per_class", "2", "--output_path", str(tmp_path), "--device", "cpu"])
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (2, 32, 32, 3)
    vae, (drafter, refiner) = load_published(hub, "drafter_8.pth", "refiner_8.pth")
    image = collaborative_generate(drafter, refiner, vae, [3], draft_steps=8, seed=1, cfg=1.5, top_k=600,
                                   top_p=0.96, temperature=[1.1] * 7 + [1.0] * 3)
    assert np.array_equal(arr[1], to_uint8(image)[0])


def test_two_processes_under_torchrun_give_the_same_npz(reference, small_ckpts, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "sample_CoDe.py", *small_argv(small_ckpts, tmp_path, "--batch_size", "2")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "samples_12x8x8x3.npz").read_bytes() == reference[1]
    assert r.stdout.count("saved ") == 1  # only rank 0 reports


def test_fast_path_is_the_default_and_equals_the_eager_path(reference, small_ckpts, tmp_path, monkeypatch):
    built = []
    original = sample_CoDe.build_fast_path
    monkeypatch.setattr(sample_CoDe, "build_fast_path", lambda *a: built.append(1) or original(*a))
    assert sample(small_argv(small_ckpts, tmp_path / "fast", "--batch_size", "5")).read_bytes() == reference[1]
    assert built == [1]
    eager = sample(small_argv(small_ckpts, tmp_path / "eager", "--batch_size", "5", "--eager"))
    assert built == [1] and eager.read_bytes() == reference[1]
