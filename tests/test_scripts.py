"""infer_original.py and infer_CoDe.py end to end on tiny models: flags reach the library, errors are clear."""
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import infer_CoDe
import infer_original
from cli.args import UsageError, code_temperature, exit_on_error
from code import CollaborativeDecoder, FastPath, box_mask, collaborative_generate, inpaint, var_generate
from conftest import ROOT
from models import load_vae, load_var
from tiny_checkpoints import load_published
from utils.images import make_grid, read_png

CODE_TEMPERATURE = [1.1] * 7 + [1.0] * 3


def small_args(ckpts, *extra):
    return ["--drafter_ckpt", str(ckpts["drafter"]), "--refiner_ckpt", str(ckpts["refiner"]),
            "--vae_ckpt", str(ckpts["vae"]), "--device", "cpu", *extra]


def load_small(ckpts):
    drafter, refiner = load_var(ckpts["drafter"]).eval(), load_var(ckpts["refiner"]).eval()
    return load_vae(ckpts["vae"], patch_nums=drafter.config.patch_nums), drafter, refiner


def run(module, argv):
    return module.main(module.parse_args(argv))


def grid_of(images):
    """What the scripts save: the grid, 8 per row, rounded to nearest (test_torchvision_parity: torchvision's)."""
    return make_grid(images, nrow=8).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_infer_original_by_depth_matches_the_library(hub, tmp_path, capsys):
    out = tmp_path / "grid.png"
    run(infer_original, ["--model_depth", "30", "--class_labels", "1,3", "--cfg", "2.5", "--top_k", "50",
                         "--top_p", "0.9", "--temperature", "1.2", "--seed", "7", "--output", str(out), "--device",
                         "cpu"])
    vae, (var,) = load_published(hub, "var_d30.pth")
    expected = CollaborativeDecoder(vae, [var], [])([1, 3], seed=7, cfg=2.5, top_k=50, top_p=0.9, temperature=1.2)
    grid = read_png(out)
    assert grid.shape == (32, 64, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid, grid_of(expected))
    report = capsys.readouterr().out
    assert "var_d30.pth: 2 images of 32x32, cpu float32" in report
    assert "latency without the VQVAE decoder" in report and "latency with the VQVAE decoder" in report
    assert "images/s" in report and "peak GPU memory: n/a" in report


def test_infer_original_defaults_are_the_published_ones(hub, tmp_path):
    out = tmp_path / "grid.png"
    run(infer_original, ["--class_labels", "4", "--output", str(out), "--device", "cpu"])
    vae, (var,) = load_published(hub, "var_d30.pth")
    expected = CollaborativeDecoder(vae, [var], [])([4], seed=42, cfg=4.0, top_k=900, top_p=0.95)  # the published demo's
    assert np.array_equal(read_png(out), grid_of(expected))


def test_infer_original_from_explicit_paths(small_ckpts, tmp_path):
    out = tmp_path / "grid.png"
    flags = ["--model_ckpt", str(small_ckpts["drafter"]), "--vae_ckpt", str(small_ckpts["vae"]), "--class_labels",
             "8", "--output", str(out), "--device", "cpu"]
    run(infer_original, flags)
    vae, drafter, _ = load_small(small_ckpts)
    assert np.array_equal(read_png(out), grid_of(var_generate(drafter, vae, [8], seed=42, cfg=4.0, top_k=900, top_p=0.95)))
    with pytest.raises(UsageError, match="VAR: .* holds a depth-2 VAR but --model_depth 16 was given: pass --model_depth 2"):
        run(infer_original, flags + ["--model_depth", "16"])


@pytest.mark.parametrize("training_free", [False, True])
def test_infer_code_loads_the_published_pair(hub, tmp_path, training_free):
    out = tmp_path / "grid.png"
    run(infer_CoDe, ["--drafter_depth", "30", "--refiner_depth", "16", "--draft_steps", "8", "--class_labels", "5",
                     "9", "--output", str(out), "--device", "cpu"] + ["--training_free"] * training_free)
    names = ("var_d30.pth", "var_d16.pth") if training_free else ("drafter_8.pth", "refiner_8.pth")
    vae, (drafter, refiner) = load_published(hub, *names)
    expected = collaborative_generate(drafter, refiner, vae, [5, 9], draft_steps=8, seed=42, cfg=4.0, top_k=600,
                                      top_p=0.95, temperature=CODE_TEMPERATURE)
    assert np.array_equal(read_png(out), grid_of(expected))


def test_infer_code_from_ckpt_dir_without_the_hub(offline_hf_cache, published_ckpts, tmp_path):
    out = tmp_path / "grid.png"
    run(infer_CoDe, ["--ckpt_dir", str(published_ckpts["var_d30.pth"].parent), "--training_free", "--draft_steps",
                     "10", "--class_labels", "2", "--output", str(out), "--device", "cpu"])
    vae, (var,) = load_published(published_ckpts, "var_d30.pth")  # draft steps 10: the drafter alone
    expected = CollaborativeDecoder(vae, [var], [])([2], seed=42, cfg=4.0, top_k=600, top_p=0.95, temperature=CODE_TEMPERATURE)
    assert np.array_equal(read_png(out), grid_of(expected))


def test_every_sampling_flag_and_batch_cycling(small_ckpts, tmp_path):
    out = tmp_path / "grid.png"
    run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "2", "--class_labels", "1,2", "--batch_size", "5",
                               "--cfg", "3", "--top_k", "0,20,30,5", "--top_p", "0.8", "--temperature", "1.3*2,0.9*2",
                               "--seed", "11", "--output", str(out)))
    vae, drafter, refiner = load_small(small_ckpts)
    expected = collaborative_generate(drafter, refiner, vae, [1, 2, 1, 2, 1], draft_steps=2, seed=11, cfg=3.0,
                                      top_k=[0, 20, 30, 5], top_p=0.8, temperature=[1.3, 1.3, 0.9, 0.9])
    assert read_png(out).shape == (8, 40, 3)
    assert np.array_equal(read_png(out), grid_of(expected))


def test_fast_flag_gives_the_eager_grid_and_report(small_ckpts, tmp_path, capsys):
    eager, fast = tmp_path / "eager.png", tmp_path / "fast.png"
    flags = small_args(small_ckpts, "--draft_steps", "2", "--class_labels", "1,2,3", "--seed", "5")
    run(infer_CoDe, flags + ["--output", str(eager)])
    run(infer_CoDe, flags + ["--output", str(fast), "--fast"])
    assert np.array_equal(read_png(eager), read_png(fast))  # fp32 on the CPU: the fast path equals the eager one
    report = capsys.readouterr().out
    assert "cpu float32, fast path" in report and report.count("latency without the VQVAE decoder") == 2


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_fast_decoder_copy_is_in_dtype_as_the_help_says(small_ckpts, tmp_path, monkeypatch, dtype, torch_dtype):
    built = []
    monkeypatch.setattr(infer_CoDe, "FastPath", lambda *a, **k: built.append(FastPath(*a, **k)) or built[-1])
    run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "2", "--class_labels", "1", "--fast", "--dtype", dtype,
                               "--output", str(tmp_path / "grid.png")))
    assert built[0].decoder.dtype == torch_dtype
    assert {m.head.weight.dtype for m in built[0].models} == {torch_dtype}


def test_more_smooth_flag_reaches_the_library_on_the_eager_path_only(small_ckpts, tmp_path):
    out = tmp_path / "grid.png"
    run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "2", "--class_labels", "1,2", "--seed", "5",
                               "--more_smooth", "--output", str(out)))
    vae, drafter, refiner = load_small(small_ckpts)
    expected = collaborative_generate(drafter, refiner, vae, [1, 2], draft_steps=2, seed=5, cfg=4.0, top_k=600,
                                      top_p=0.95, temperature=code_temperature(4), more_smooth=True)
    assert np.array_equal(read_png(out), grid_of(expected))
    run(infer_original, ["--model_ckpt", str(small_ckpts["drafter"]), "--vae_ckpt", str(small_ckpts["vae"]),
                         "--class_labels", "8", "--more_smooth", "--output", str(out), "--device", "cpu"])
    expected = var_generate(drafter, vae, [8], seed=42, cfg=4.0, top_k=900, top_p=0.95, more_smooth=True)
    assert np.array_equal(read_png(out), grid_of(expected))
    with pytest.raises(UsageError, match="--more_smooth runs on the eager path only: leave out --fast"):
        run(infer_CoDe, small_args(small_ckpts, "--more_smooth", "--fast", "--output", str(out)))


@pytest.mark.parametrize("steps, unused", [("0", "drafter"), ("4", "refiner")])
def test_a_model_that_generates_no_scale_is_not_loaded(small_ckpts, tmp_path, steps, unused):
    out = tmp_path / "grid.png"
    ckpts = {**small_ckpts, unused: tmp_path / "absent.pth"}
    run(infer_CoDe, small_args(ckpts, "--draft_steps", steps, "--class_labels", "6", "--output", str(out)))
    argv = small_args(small_ckpts, "--draft_steps", steps, "--class_labels", "6", "--output", str(out))
    argv.remove(f"--{unused}_ckpt")
    argv.remove(str(small_ckpts[unused]))
    run(infer_CoDe, argv)  # not --training_free, and no published drafter_0 / refiner_4: not needed either
    vae, drafter, refiner = load_small(small_ckpts)
    alone = refiner if unused == "drafter" else drafter
    expected = var_generate(alone, vae, [6], seed=42, cfg=4.0, top_k=600, top_p=0.95, temperature=[1.1, 1.0, 1.0, 1.0])
    assert np.array_equal(read_png(out), grid_of(expected))


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_runs_generation_under_autocast(small_ckpts, tmp_path, dtype, torch_dtype):
    out = tmp_path / "grid.png"
    images, _ = run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "1", "--class_labels", "3", "--dtype", dtype,
                                           "--output", str(out)))
    vae, drafter, refiner = load_small(small_ckpts)
    assert drafter.head.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch_dtype):
        state = CollaborativeDecoder(vae, [drafter, refiner], 1).state([3], seed=42, cfg=4.0, top_k=600, top_p=0.95,
                                                                      temperature=[1.1, 1.0, 1.0, 1.0])
        expected = vae.fhat_to_img(state.f_hat)
    assert expected.dtype == torch_dtype
    assert np.array_equal(read_png(out), grid_of(expected.float().add(1).mul(0.5)))
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1


def test_inpainting_with_a_box_or_a_mask_png(small_ckpts, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(tmp_path / "in.png")  # 12 wide
    mask = np.zeros((8, 12), np.uint8)
    mask[0:4, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    flags = ["--draft_steps", "2", "--class_labels", "4", "7", "--image", str(tmp_path / "in.png"), "--seed", "3"]
    run(infer_CoDe, small_args(small_ckpts, *flags, "--mask", "2,0,6,4", "--output", str(tmp_path / "box.png")))
    run(infer_CoDe, small_args(small_ckpts, *flags, "--mask", str(tmp_path / "mask.png"), "--output",
                               str(tmp_path / "png.png")))
    vae, drafter, refiner = load_small(small_ckpts)
    source = torch.from_numpy(np.asarray(Image.open(tmp_path / "in.png"))[:, 2:10].copy())  # centre crop
    source = source.permute(2, 0, 1)[None].float().div(127.5).sub(1)
    expected = inpaint(vae, [drafter, refiner], 2, source, box_mask(8, (0, 0, 4, 4)), [4, 7], seed=3, cfg=4.0,
                       top_k=600, top_p=0.95, temperature=[1.1, 1.0, 1.0, 1.0])
    assert np.array_equal(read_png(tmp_path / "box.png"), grid_of(expected))
    assert np.array_equal(read_png(tmp_path / "png.png"), grid_of(expected))
    with pytest.raises(UsageError, match="box 0,0,13,4 must satisfy 0 <= x0 < x1 <= 12"):
        run(infer_CoDe, small_args(small_ckpts, *flags, "--mask", "0,0,13,4", "--output", str(tmp_path / "x.png")))
    Image.fromarray(mask[:, :8]).save(tmp_path / "small_mask.png")
    with pytest.raises(UsageError, match="is 8x8 but the image is 12x8"):
        run(infer_CoDe, small_args(small_ckpts, *flags, "--mask", str(tmp_path / "small_mask.png"), "--output",
                                   str(tmp_path / "x.png")))


@pytest.mark.parametrize("argv, message", [
    (["--draft_steps", "5"], "add --training_free"),
    (["--draft_steps", "8", "--drafter_depth", "24"], "no published fine-tuned CoDe drafter"),
    (["--training_free", "--class_labels", "10"], "class 10 is not in 0..9"),
    (["--training_free", "--top_k", "1,2,3"], "--top_k has 3 entries but there are 10 scales"),
    (["--training_free", "--cfg", "-1"], "--cfg must be a number >= 0"),
])
def test_bad_values_found_after_parsing(hub, tmp_path, argv, message):
    with pytest.raises(UsageError, match=message):
        run(infer_CoDe, argv + ["--output", str(tmp_path / "g.png"), "--device", "cpu"])
    assert not (tmp_path / "g.png").exists()


def test_explicit_checkpoint_checked_against_the_depth_flag(small_ckpts, tmp_path):
    with pytest.raises(UsageError, match="drafter: .* holds a depth-2 VAR but --drafter_depth 30 was given: pass --drafter_depth 2"):
        run(infer_CoDe, small_args(small_ckpts, "--drafter_depth", "30", "--output", str(tmp_path / "g.png")))
    with pytest.raises(UsageError, match="--draft_steps 6 exceeds the 4 scales"):
        run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "6", "--output", str(tmp_path / "g.png")))


def test_missing_checkpoint_offline_says_what_to_download(offline_hf_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="`hf download FoundationVision/var var_d16.pth"):
        run(infer_original, ["--model_depth", "16", "--output", str(tmp_path / "g.png"), "--device", "cpu"])


def test_unwritable_output_folder_fails_before_loading(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError, match="cannot write to the output folder"):
        run(infer_original, ["--output", str(tmp_path / "file" / "g.png"), "--device", "cpu"])


@pytest.mark.parametrize("argv", [["--model_depth", "0"], ["--ckpt_dir", "/nonexistent"], ["--top_k", "many"], ["--class_labels", "-1"],
                                  ["--batch_size", "0"], ["--dtype", "fp8"]])
def test_argparse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        infer_original.parse_args(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [["--draft_steps", "11"], ["--image", "x.png"], ["--mask", "0,0,1,1"]])
def test_code_argparse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        infer_CoDe.parse_args(argv)
    assert e.value.code == 2


def test_exit_on_error_prints_one_line_and_exits_2_for_bad_input_1_for_a_failed_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exit_on_error(infer_original.main, infer_original.parse_args(["--output", str(tmp_path / "g.png"),
                                                                      "--device", "nope"]))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --device 'nope' is not a device (cuda, cuda:N or cpu)\n"

    def disk_full(args):
        raise OSError(28, "No space left on device")
    with pytest.raises(SystemExit) as e:
        exit_on_error(disk_full, None)
    assert e.value.code == 1 and capsys.readouterr().err == "error: [Errno 28] No space left on device\n"


@pytest.mark.parametrize("flag, value", [("--cfg", "inf"), ("--temperature", "inf"), ("--temperature", "1.1,inf,1,1"),
                                         ("--top_p", "nan"), ("--cfg", "nan")])
def test_every_sampling_number_must_be_finite(small_ckpts, tmp_path, flag, value):
    with pytest.raises(UsageError, match=f"{flag} must be"):
        run(infer_CoDe, small_args(small_ckpts, "--draft_steps", "2", flag, value, "--output", str(tmp_path / "g.png")))
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("labels, message", [
    ([1.0, 2.0], "integer class ids, got torch.float32"), ([True, False], "integer class ids, got torch.bool"),
    (["cat"], "integer class ids"), ([[1, 2]], "1-D list"), ([], "non-empty")])
def test_labels_that_are_not_class_ids(small_ckpts, labels, message):
    vae, drafter, refiner = load_small(small_ckpts)
    with pytest.raises(ValueError, match=message):
        collaborative_generate(drafter, refiner, vae, labels, draft_steps=2)


def test_negative_class_ids_are_named(capsys):
    for argv in (["--class_labels", "-1"], ["--class_labels", "1,-3"]):
        with pytest.raises(SystemExit) as e:
            infer_original.parse_args(argv)
        assert e.value.code == 2 and "is not a class id (an integer >= 0) or a range" in capsys.readouterr().err


def test_a_vqvae_of_other_scales_is_named(small_ckpts, published_ckpts, tmp_path):
    """A 10-scale VQVAE with a 4-scale VAR used to fail on a buffer's shape."""
    with pytest.raises(UsageError, match=r"is a VQVAE of 10 scales .* but patch_nums \(1, 2, 3, 4\) has 4: use the VQVAE"):
        run(infer_CoDe, small_args({**small_ckpts, "vae": published_ckpts["vae_ch160v4096z32.pth"]},
                                   "--draft_steps", "2", "--output", str(tmp_path / "g.png")))
    assert not (tmp_path / "g.png").exists()


# ---- real processes ---------------------------------------------------------------------------------
def script(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as in-process (conftest.py)
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


HELP_OF_EVERY_SCRIPT_THEN_A_RUN = """
import runpy, sys
names, run = sys.argv[1:sys.argv.index("--then")], sys.argv[sys.argv.index("--then") + 1:]
for name in names:
    print(f"=== {name}")
    sys.argv = [name, "--help"]
    try:
        runpy.run_path(name, run_name="__main__")
    except SystemExit as e:
        print(f"=== exit {e.code}")
print("=== run")
sys.argv = run
runpy.run_path(run[0], run_name="__main__")
print("=== dynamo imported:", "torch._dynamo" in sys.modules)
"""
SCRIPT_FLAGS = {"infer_original.py": "--model_depth", "infer_CoDe.py": "--training_free", "sample_CoDe.py": "--per_class",
                "train_drafter.py": "--draft_steps", "train_refiner.py": "--teacher", "train_var.py": "--depth",
                "train_vqvae.py": "--data_path"}


@pytest.mark.slow
def test_every_script_runs_from_a_fresh_interpreter_prints_its_help_and_generates(hub, small_ckpts, tmp_path):
    """One interpreter runs each script as __main__ from the root, as `python script.py --help` would, then
    infer_CoDe.py as `python infer_CoDe.py ...` would, on the fast path: uncompiled (as on a CPU), loading and
    generating never import Dynamo (~1.5 s of every run)."""
    r = script("-c", HELP_OF_EVERY_SCRIPT_THEN_A_RUN, *SCRIPT_FLAGS, "--then", "infer_CoDe.py",
               *small_args(small_ckpts, "--draft_steps", "2", "--class_labels", "1", "2", "--fast", "--output",
                           str(tmp_path / "b.png")))
    helps = {m[0]: (m[1], m[2]) for m in re.findall(r"=== (\S+)\n(.*?)=== exit (\S+)", r.stdout, re.S)}
    assert list(helps) == list(SCRIPT_FLAGS), r.stderr[-2000:]
    for name, flag in SCRIPT_FLAGS.items():
        text, code = helps[name]
        assert code == "0" and flag in text and "--device" in text, name
    assert all("--dtype" in helps[name][0] for name in ("infer_original.py", "infer_CoDe.py", "sample_CoDe.py"))
    assert r.returncode == 0 and read_png(tmp_path / "b.png").shape == (8, 16, 3), r.stderr
    assert "latency with the VQVAE decoder" in r.stdout.split("=== run")[1]
    assert "fast path checked against the eager path" in r.stdout and "=== dynamo imported: False" in r.stdout


def test_a_failure_through_the_main_block_exits_2_with_one_line(small_ckpts, tmp_path, capsys, monkeypatch):
    """In-process (two ranks exit 2 too: tests/test_first_use.py)."""
    monkeypatch.setattr(sys, "argv", ["infer_CoDe.py", *small_args(small_ckpts, "--draft_steps", "2", "--class_labels",
                                                                   "12", "--output", str(tmp_path / "c.png"))])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "infer_CoDe.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().endswith("class 12 is not in 0..9 (the model has 10 classes)"), err
