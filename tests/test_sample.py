"""sample_CoDe.py: the same images whatever the batch size, process count or interruptions; a valid .npz."""
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import fid.samples
import sample_CoDe
from benchmarks import sample_pipeline
from cli.args import UsageError
from code import collaborative_generate
from conftest import ROOT
from tiny import output_to
from fid.samples import (Batch, ImageKey, MissingImagesError, SampleFolder, SampleWriteError, image_seed, plan,
                         png_is_whole)
from fid.writer import BatchWriter
from models import load_vae, load_var
from tiny_checkpoints import load_published
from utils.images import read_png, to_uint8

CLASSES, PER_CLASS = "0-2,5", 3  # 12 images
NAMES = [f"{c:04d}_{i:04d}.png" for c in (0, 1, 2, 5) for i in range(3)]


def small_argv(ckpts, out, *extra):
    """Each image decoded alone (--decode_chunk 1): on the CPU its pixels are then batch-independent bitwise."""
    return ["--drafter_ckpt", str(ckpts["drafter"]), "--refiner_ckpt", str(ckpts["refiner"]), "--vae_ckpt",
            str(ckpts["vae"]), "--draft_steps", "2", "--classes", CLASSES, "--per_class", str(PER_CLASS),
            "--output_path", str(out), "--device", "cpu", "--decode_chunk", "1", "--workers", "2", *extra]


def sample(argv):
    return sample_CoDe.main(sample_CoDe.parse_args(argv))


def sample_quietly(argv):
    output_to(os.devnull)
    sample(argv)


def pngs(folder):
    return sorted(p.name for p in (folder / "images").iterdir())


def npz_array(path):
    with np.load(path) as z:
        return z["arr_0"]


def shard_tokens(folder):
    """key -> the token maps recorded in the shards."""
    out = {}
    for path in (folder / "shards").glob("*.npz"):
        with np.load(path) as z:
            out.update({tuple(k): t for k, t in zip(z["keys"].tolist(), z["tokens"])})
    return out


def small_models(ckpts):
    drafter, refiner = load_var(ckpts["drafter"]).eval(), load_var(ckpts["refiner"]).eval()
    return load_vae(ckpts["vae"], patch_nums=drafter.config.patch_nums), drafter, refiner


def alone(ckpts, key, seed=0):
    """Image `key` generated alone, as published (a batch of one, its own seed), in [0, 1]."""
    vae, drafter, refiner = small_models(ckpts)
    return collaborative_generate(drafter, refiner, vae, [key.cls], draft_steps=2, seed=image_seed(seed, key),
                                  cfg=1.5, top_k=600, top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def reference(small_ckpts, tmp_path_factory):
    """An uninterrupted single-process run with batch size 3: the .npz bytes every other run must give."""
    out = tmp_path_factory.mktemp("reference")
    npz = sample(small_argv(small_ckpts, out, "--batch_size", "3"))
    return out, npz.read_bytes()


def test_npz_is_the_evaluator_format_in_class_index_order(reference, small_ckpts):
    out, _ = reference
    arr = npz_array(out / "samples_12x8x8x3.npz")
    assert arr.shape == (12, 8, 8, 3) and arr.dtype == np.uint8 and arr.max() > arr.min()
    assert pngs(out) == NAMES
    assert all(np.array_equal(a, read_png(out / "images" / n)) for a, n in zip(arr, NAMES))
    assert len({a.tobytes() for a in arr}) == 12
    assert sorted(shard_tokens(out)) == [(c, i) for c in (0, 1, 2, 5) for i in range(3)]


def test_each_image_is_generated_alone_from_its_own_seed_and_truncated_as_published(reference, small_ckpts):
    """As published: image i of class c is class c generated alone with seed i (for --seed 0), and its pixels are
    (x * 255).astype(uint8) of the decoded image."""
    out, _ = reference
    arr = npz_array(out / "samples_12x8x8x3.npz")
    for row, key in [(0, ImageKey(0, 0)), (5, ImageKey(1, 2)), (10, ImageKey(5, 1))]:
        image = alone(small_ckpts, key)
        published = (image.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)[0]
        assert np.array_equal(arr[row], published)
        assert not np.array_equal(arr[row], to_uint8(image)[0])  # rounding would give other pixels
    assert image_seed(3, ImageKey(7, 2)) == 3 * 2**16 + 2


def test_rounding_nearest_and_its_resume_check(reference, small_ckpts, tmp_path):
    one = ["--classes", "4", "--per_class", "1"]
    nearest = npz_array(sample(small_argv(small_ckpts, tmp_path, *one, "--rounding", "nearest")))
    assert np.array_equal(nearest[0], to_uint8(alone(small_ckpts, ImageKey(4, 0)))[0])
    with pytest.raises(UsageError, match="rounding: nearest in the folder, truncate now"):
        sample(small_argv(small_ckpts, tmp_path, *one))
    truncating = tmp_path / "truncating"
    sample(small_argv(small_ckpts, truncating, *one))
    with pytest.raises(UsageError, match="rounding: truncate in the folder, nearest now"):
        sample(small_argv(small_ckpts, truncating, *one, "--rounding", "nearest"))


def test_seed_and_dtype_flags(small_ckpts, tmp_path):
    one = ["--classes", "4", "--per_class", "1"]
    seeded = npz_array(sample(small_argv(small_ckpts, tmp_path / "s1", *one, "--seed", "1")))
    image = alone(small_ckpts, ImageKey(4, 0), seed=1)
    assert np.array_equal(seeded[0], (image.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)[0])
    fp32 = npz_array(sample(small_argv(small_ckpts, tmp_path / "fp32", *one)))
    bf16 = npz_array(sample(small_argv(small_ckpts, tmp_path / "bf16", *one, "--dtype", "bf16")))
    assert bf16.shape == fp32.shape == (1, 8, 8, 3) and not np.array_equal(bf16, fp32)
    assert "bfloat16" in (tmp_path / "bf16" / "run.json").read_text()


def test_more_smooth_needs_eager_decodes_its_own_f_hat_and_binds_a_resume(small_ckpts, tmp_path):
    one = ["--classes", "4", "--per_class", "1"]
    with pytest.raises(UsageError, match="--more_smooth runs on the eager path only: add --eager"):
        sample(small_argv(small_ckpts, tmp_path / "fast", *one, "--more_smooth"))
    smooth = npz_array(sample(small_argv(small_ckpts, tmp_path, *one, "--more_smooth", "--eager")))
    vae, drafter, refiner = small_models(small_ckpts)
    image = collaborative_generate(drafter, refiner, vae, [4], draft_steps=2, seed=image_seed(0, ImageKey(4, 0)),
                                   cfg=1.5, top_k=600, top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0], more_smooth=True)
    assert np.array_equal(smooth[0], (image.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)[0])
    with pytest.raises(UsageError, match="more_smooth: True in the folder, False now"):
        sample(small_argv(small_ckpts, tmp_path, *one, "--eager"))


def test_batch_size_does_not_change_the_images(reference, small_ckpts, tmp_path):
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "5"))
    assert npz.read_bytes() == reference[1]


def test_batched_decoding_keeps_the_tokens_and_the_pixels_within_one_level(reference, small_ckpts, tmp_path):
    """The default decodes several images per call: tokens stay exactly those of the per-image run, pixels may
    differ by the decoder's rounding for another batch shape (within one level)."""
    batched = npz_array(sample(small_argv(small_ckpts, tmp_path, "--batch_size", "5", "--decode_chunk", "16")))
    ref = npz_array(reference[0] / "samples_12x8x8x3.npz")
    mine, theirs = shard_tokens(tmp_path), shard_tokens(reference[0])
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    assert np.abs(batched.astype(int) - ref).max() <= 1 and (batched == ref).mean() > 0.99


def test_resume_after_an_interruption_gives_the_same_npz(reference, small_ckpts, tmp_path):
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "4"))
    shards = sorted((tmp_path / "shards").glob("*.npz"))
    assert len(shards) == 3
    shards[1].unlink()  # as if killed before this batch was recorded; its PNGs may exist or not
    (tmp_path / "images" / "0001_0000.png").unlink()
    (tmp_path / "images" / ".0001_0000.png.abc123xy.tmp").write_bytes(b"half a png")
    (tmp_path / "shards" / ".0001_0000+4.npz.x1_2k9q0.tmp").write_bytes(b"half a shard")
    (tmp_path / f".{npz.name}.x2q8w1e0.tmp").write_bytes(b"half an npz")
    kept = {p.name: p.stat().st_mtime_ns for p in (shards[0], shards[2])}
    npz.unlink()
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "2"))
    assert npz.read_bytes() == reference[1]
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".checkpoint_sha256.json"]
    assert {n: (tmp_path / "shards" / n).stat().st_mtime_ns for n in kept} == kept  # finished batches not redone
    assert pngs(tmp_path) == NAMES


@pytest.mark.slow
@pytest.mark.parametrize("png", [True, False])
def test_a_kill_while_writing_resumes_to_the_same_npz(reference, small_ckpts, tmp_path, png):
    """A real SIGKILL of a running process (forked from this one: no interpreter start), then the same command
    again."""
    argv = small_argv(small_ckpts, tmp_path, "--batch_size", "1", "--per_class", "20", "--classes", "0-2,5",
                      *([] if png else ["--no_png"]))
    proc = multiprocessing.get_context("fork").Process(target=sample_quietly, args=(argv,))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "shards").glob("*.npz"))) < 3 and proc.is_alive():
        time.sleep(0.005)
    proc.kill()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    interrupted = not list(tmp_path.glob("samples_*.npz"))
    npz = sample(argv)
    straight = sample(small_argv(small_ckpts, tmp_path / "straight", "--batch_size", "7", "--per_class", "20",
                                 "--classes", "0-2,5", "--no_png"))
    assert npz.read_bytes() == straight.read_bytes() and interrupted
    assert (tmp_path / "images").is_dir() == png or not png and not list((tmp_path / "images").iterdir())
    if png:
        assert len(pngs(tmp_path)) == 80 and all(png_is_whole(p) for p in (tmp_path / "images").iterdir())


def test_no_png_writes_only_shards_and_the_npz_and_png_later_fills_them_in(reference, small_ckpts, tmp_path):
    npz = sample(small_argv(small_ckpts, tmp_path, "--no_png"))
    assert npz.read_bytes() == reference[1] and not list((tmp_path / "images").iterdir())
    npz = sample(small_argv(small_ckpts, tmp_path))  # the same settings: PNGs are written from the shards
    assert npz.read_bytes() == reference[1] and pngs(tmp_path) == NAMES


def test_damaged_pngs_and_shards_are_named_and_regenerated(reference, small_ckpts, tmp_path, caplog):
    sample(small_argv(small_ckpts, tmp_path, "--batch_size", "6"))
    images = tmp_path / "images"
    whole = read_png(images / "0002_0001.png")
    (images / "0002_0001.png").write_bytes((images / "0002_0001.png").read_bytes()[:100])  # truncated
    (images / "0005_0002.png").write_bytes(b"")  # empty
    shard = sorted((tmp_path / "shards").glob("*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:500])  # a shard damaged on disk
    caplog.set_level("INFO")
    npz = sample(small_argv(small_ckpts, tmp_path, "--batch_size", "6"))
    assert npz.read_bytes() == reference[1]
    assert np.array_equal(read_png(images / "0002_0001.png"), whole)
    log = caplog.text
    assert f"shard {shard} is damaged" in log and "rewrote 2 missing or damaged PNGs" in log
    assert "0002_0001.png" in log and "0005_0002.png" in log


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


def test_other_weights_under_the_same_file_name_are_refused(reference, small_ckpts, tmp_path):
    """Issue 12: run.json used to record basenames only, so a copy of another VAR named like the drafter mixed
    two models in one .npz."""
    sample(small_argv(small_ckpts, tmp_path / "out"))
    impostor = tmp_path / "elsewhere" / small_ckpts["drafter"].name
    impostor.parent.mkdir()
    shutil.copy(small_ckpts["refiner"], impostor)  # another model under the drafter's name
    (tmp_path / "out" / "images" / "0000_0000.png").unlink()
    argv = small_argv({**small_ckpts, "drafter": impostor}, tmp_path / "out")
    with pytest.raises(UsageError, match=r"weights differ \(drafter: d2.pth sha256 [0-9a-f]{16} in the folder, "
                                         r"d2.pth sha256 [0-9a-f]{16} now\)"):
        sample(argv)
    moved = tmp_path / "moved" / "renamed.pth"  # the same weights elsewhere, under another name: fine
    moved.parent.mkdir()
    shutil.copy(small_ckpts["drafter"], moved)
    assert sample(small_argv({**small_ckpts, "drafter": moved}, tmp_path / "out")).read_bytes() == reference[1]


def test_an_unreadable_run_json_is_a_clear_error(reference, small_ckpts, tmp_path):
    sample(small_argv(small_ckpts, tmp_path, "--per_class", "1"))
    for text in ("", "{not json"):
        (tmp_path / "run.json").write_text(text)
        with pytest.raises(UsageError, match=r"run.json is unreadable .* restore it, or delete it"):
            sample(small_argv(small_ckpts, tmp_path, "--per_class", "1"))


def test_a_failing_writer_names_the_image_and_loses_nothing(reference, small_ckpts, tmp_path, monkeypatch):
    real = fid.samples.atomic_write

    def disk_full_for_one(path, write):
        if path.name == "0002_0001.png":
            raise OSError(28, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(fid.samples, "atomic_write", disk_full_for_one)
    with pytest.raises(SampleWriteError, match=r"could not write .*0002_0001.png: No space left on device"):
        sample(small_argv(small_ckpts, tmp_path, "--batch_size", "2"))
    done = SampleFolder(tmp_path).done()
    assert ImageKey(0, 0) in done and ImageKey(2, 1) not in done and not list(tmp_path.glob("*.npz"))
    monkeypatch.setattr(fid.samples, "atomic_write", real)
    assert sample(small_argv(small_ckpts, tmp_path, "--batch_size", "2")).read_bytes() == reference[1]


def test_the_writer_bounds_its_queue_and_stops_on_the_first_error(tmp_path):
    folder = SampleFolder(tmp_path)
    folder.prepare()
    pixels, tokens = np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 5), np.int16)
    calls = []
    real = folder.write

    def slow_write(batch, png):
        calls.append(batch.keys[0])
        time.sleep(0.05)
        if batch.keys[0].index == 1:
            raise SampleWriteError("could not write x.png")
        return real(batch, png)

    folder.write = slow_write
    writer = BatchWriter(folder, png=False, workers=1, max_pending=1)
    writer.submit(Batch([ImageKey(0, 0)], tokens, pixels))
    start = time.perf_counter()
    writer.submit(Batch([ImageKey(0, 1)], tokens, pixels))  # waits for the first: one batch in flight at most
    assert time.perf_counter() - start > 0.03
    with pytest.raises(SampleWriteError, match="x.png"):
        for i in range(2, 10):
            writer.submit(Batch([ImageKey(0, i)], tokens, pixels))
    assert len(calls) <= 3
    with pytest.raises(SampleWriteError):
        writer.close()
    assert list(SampleFolder(tmp_path).done()) == [ImageKey(0, 0)]


def test_a_missing_image_at_assembly_is_an_error_that_keeps_the_rest(reference, tmp_path):
    folder = SampleFolder(tmp_path)
    shutil.copytree(reference[0] / "shards", folder.shards)
    keys = plan([0, 1, 2, 5, 7], 3)
    with pytest.raises(MissingImagesError, match=r"3 of 15 images are missing \(e.g. 0007_0000\): rerun"):
        folder.assemble(keys, folder.done())
    assert len(list(folder.shards.iterdir())) == 4 and not list(tmp_path.glob("*.npz"))


def test_bad_inputs(small_ckpts, tmp_path):
    with pytest.raises(UsageError, match="--classes: class 10 is not in 0..9"):
        sample(small_argv(small_ckpts, tmp_path / "o1", "--classes", "9-10"))
    with pytest.raises(UsageError, match="--classes: class 10 is not in 0..9"):
        sample(small_argv(small_ckpts, tmp_path / "o2", "--classes", "10"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # nothing created for a bad command
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write to the output folder"):
        sample(small_argv(small_ckpts, tmp_path / "file" / "out"))
    for argv in (["--per_class", "0"], ["--batch_size", "-2"], ["--classes", "5-2"], ["--draft_steps", "-1"],
                 ["--rounding", "floor"], ["--decode_chunk", "0"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as e:
            sample_CoDe.parse_args(argv)
        assert e.value.code == 2


def test_published_names_and_draft_steps(hub, tmp_path):
    npz = sample(["--drafter_depth", "30", "--refiner_depth", "16", "--draft_steps", "8", "--classes", "3",
                  "--per_class", "2", "--output_path", str(tmp_path), "--device", "cpu", "--decode_chunk", "1"])
    arr = npz_array(npz)
    assert arr.shape == (2, 32, 32, 3)
    vae, (drafter, refiner) = load_published(hub, "drafter_8.pth", "refiner_8.pth")
    image = collaborative_generate(drafter, refiner, vae, [3], draft_steps=8, seed=1, cfg=1.5, top_k=600,
                                   top_p=0.96, temperature=[1.1] * 7 + [1.0] * 3)
    assert np.array_equal(arr[1], to_uint8(image, "truncate")[0])


@pytest.mark.slow
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


def test_generation_does_not_wait_for_the_writers(small_ckpts, tmp_path, monkeypatch):
    """While a batch is being written, the next one is generated: the writer runs in another thread."""
    threads, real = [], fid.samples.SampleFolder.write

    def spy(self, batch, png):
        threads.append(threading.current_thread().name)
        return real(self, batch, png)

    monkeypatch.setattr(fid.samples.SampleFolder, "write", spy)
    sample(small_argv(small_ckpts, tmp_path, "--batch_size", "4"))
    assert len(threads) == 3 and all(t.startswith("sample-writer") for t in threads)


def test_tokens_of_the_shards_are_those_of_the_images(reference, small_ckpts):
    tokens = shard_tokens(reference[0])
    vae, drafter, refiner = small_models(small_ckpts)
    key = ImageKey(1, 2)
    _, maps = collaborative_generate(drafter, refiner, vae, [key.cls], draft_steps=2, seed=key.index, cfg=1.5,
                                     top_k=600, top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0], return_tokens=True)
    assert np.array_equal(tokens[(1, 2)], torch.cat([m.flatten(1) for m in maps], 1)[0].numpy())


def test_pipeline_benchmark_runs(tmp_path):
    report = sample_pipeline.main(["--images", "24", "--size", "32", "--batch_size", "8", "--gpu_s", "0", "0.01",
                                   "--workers", "2", "--dir", str(tmp_path), "--out", str(tmp_path / "t.md")])
    rows = [line for line in report.splitlines() if line.startswith("| published") or line.startswith("| ours")]
    assert len(rows) == 6 and (tmp_path / "t.md").read_text() == report
    assert all(row.split(" | ")[5].endswith("x") for row in rows) and not list(tmp_path.glob("tmp*"))


def test_settings_of_a_folder_without_images_can_be_corrected(reference, small_ckpts, tmp_path):
    """A run stopped before its first batch (a wrong flag, a kill) binds nothing: the corrected command runs."""
    folder = SampleFolder(tmp_path)
    folder.prepare()
    folder.check_settings({"top_k": 6}, binding=False)
    assert sample(small_argv(small_ckpts, tmp_path)).read_bytes() == reference[1]
    assert '"top_k": 600' in (tmp_path / "run.json").read_text()


def test_a_resume_reads_the_shards_once_and_not_their_pixels(reference, small_ckpts, tmp_path, monkeypatch):
    shutil.copytree(reference[0], tmp_path / "out")
    (tmp_path / "out" / "samples_12x8x8x3.npz").unlink()
    calls, loads = [], []
    real_done, real_load = fid.samples.SampleFolder.done, fid.samples.load_pixels
    monkeypatch.setattr(fid.samples.SampleFolder, "done", lambda self, **kw: calls.append(1) or real_done(self, **kw))
    monkeypatch.setattr(fid.samples, "load_pixels", lambda p: loads.append(p) or real_load(p))
    assert sample(small_argv(small_ckpts, tmp_path / "out")).read_bytes() == reference[1]
    assert len(calls) == 3  # rank 0 before the barrier, every rank after it, rank 0 at assembly
    assert len(loads) == len(list((tmp_path / "out" / "shards").iterdir()))  # pixels read once, to assemble
