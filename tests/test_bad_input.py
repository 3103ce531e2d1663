"""What the scripts and the API do with bad input, faults and concurrent runs (docs/errors.md): the right result,
or one line naming the input with exit status 2 (fix your input), 1 (the run failed) or 130 (interrupted)."""
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import infer_CoDe
import infer_original
import sample_CoDe
from cli.args import exit_on_error
from code import CollaborativeDecoder, FastPathError, collaborative_generate, make_edit, var_generate
from code.fast import FastPath, FastSteps
from fid.samples import MAX_PER_CLASS, MAX_SEED, ImageKey, SampleFolder, image_seed
from models import load_vae, load_var
from training.data import ImageFolder, ImageTransform
from utils.files import atomic_write
from utils.images import load_image, open_rgb
from utils.lock import FolderLock, LockError


def exit_status(module, argv, capsys) -> tuple[int, str]:
    """Run a script's main in-process as its __main__ does: (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        exit_on_error(module.main, module.parse_args(argv))
    return e.value.code, capsys.readouterr().err


def small_args(ckpts, *extra):
    return ["--drafter_ckpt", str(ckpts["drafter"]), "--refiner_ckpt", str(ckpts["refiner"]), "--vae_ckpt",
            str(ckpts["vae"]), "--draft_steps", "2", "--device", "cpu", *extra]


def sample_args(ckpts, out, *extra):
    return small_args(ckpts, "--output_path", str(out), "--decode_chunk", "1", "--workers", "1", *extra)


def npz_array(path):
    with np.load(path) as z:
        return z["arr_0"]


def missing_ckpts(tmp_path):
    """Checkpoints that do not exist: an input error reported instead of theirs was checked before loading."""
    return {k: tmp_path / f"missing_{k}.pth" for k in ("drafter", "refiner", "vae")}


# ---- 1. seeds ---------------------------------------------------------------------------------------------
def test_seed_1_differs_from_seed_0_and_seed_0_is_the_published_set(small_ckpts, tmp_path):
    one = ["--classes", "4", "--per_class", "2"]
    seed0 = npz_array(sample_CoDe.main(sample_CoDe.parse_args(sample_args(small_ckpts, tmp_path / "s0", *one))))
    seed1 = npz_array(sample_CoDe.main(sample_CoDe.parse_args(sample_args(small_ckpts, tmp_path / "s1", *one,
                                                                          "--seed", "1"))))
    assert not np.array_equal(seed0[0], seed1[0]) and not np.array_equal(seed0[1], seed1[1])
    drafter, refiner = load_var(small_ckpts["drafter"]).eval(), load_var(small_ckpts["refiner"]).eval()
    vae = load_vae(small_ckpts["vae"], patch_nums=drafter.config.patch_nums)
    for index in (0, 1):  # as published: image i of every class is generated with seed i
        image = collaborative_generate(drafter, refiner, vae, [4], draft_steps=2, seed=index, cfg=1.5, top_k=600,
                                       top_p=0.96, temperature=[1.1, 1.0, 1.0, 1.0])
        assert np.array_equal(seed0[index], (image.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)[0])


def test_every_seed_and_index_has_its_own_32_bit_seed():
    assert image_seed(0, ImageKey(3, 7)) == 7
    assert image_seed(MAX_SEED, ImageKey(0, MAX_PER_CLASS - 1)) == 2**32 - 1
    assert image_seed(1, ImageKey(0, 0)) != image_seed(0, ImageKey(0, MAX_PER_CLASS - 1))
    # torch's CPU generator keeps a seed's low 32 bits: neighbouring seeds must still give other streams
    draws = [torch.rand(4, generator=torch.Generator().manual_seed(image_seed(s, ImageKey(0, 0)))) for s in (0, 1)]
    assert not torch.equal(*draws)
    with pytest.raises(ValueError):
        image_seed(MAX_SEED + 1, ImageKey(0, 0))


@pytest.mark.parametrize("module, argv, message", [
    (sample_CoDe, ["--seed", str(MAX_SEED + 1)], f"--seed: '{MAX_SEED + 1}' is not an integer in 0..{MAX_SEED}"),
    (sample_CoDe, ["--per_class", str(MAX_PER_CLASS + 1)], f"--per_class: .* in 1..{MAX_PER_CLASS}"),
    (sample_CoDe, ["--per_class", "5000000000"], "--per_class"),
    (sample_CoDe, ["--classes", "0-999999999999"], "--classes: class id 999999999999 is above"),
    (sample_CoDe, ["--temperature", "1*9999999999"], "--temperature: .* gives more than 256 values"),
    (infer_CoDe, ["--seed", str(2**32)], f"--seed: '{2**32}' is not an integer in 0..{2**32 - 1}"),
    (infer_original, ["--seed", "-1"], "--seed"),
    (infer_original, ["--class_labels", "0-99999999999"], "--class_labels: class id"),
    (infer_original, ["--batch_size", "5000000000"], "--batch_size: '5000000000' is not an integer in 1..65536"),
])
def test_out_of_range_flags_are_refused_before_anything_is_expanded(module, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        module.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert re.search(message, err), err


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=1.7), "seed must be an integer in 0..4294967295"), (dict(seed=2**70), "seed must be an integer"),
    (dict(seed=-1), "seed must be"), (dict(seed=True), "seed must be"),
    (dict(generator="x"), "generator must be a torch.Generator"), (dict(generator=[1, 2]), "generator must be"),
    (dict(top_k=None), "top_k must be a number"), (dict(temperature="1.0"), "temperature must be a number"),
    (dict(temperature=1e-45), r"temperature must be in 0.0001..10000"), (dict(temperature=1e300), "temperature"),
    (dict(cfg=1e308), "cfg must be at most 100"), (dict(cfg=True), "cfg must be a number"),
])
def test_api_arguments_raise_a_value_error_naming_them(pair, kwargs, message):
    vae, var = pair
    with pytest.raises(ValueError, match=message):
        var_generate(var, vae, [1, 2], **kwargs)


def test_api_seed_is_the_generator_seed(pair):
    vae, var = pair
    g = torch.Generator().manual_seed(2**32 - 1)
    assert torch.equal(var_generate(var, vae, [1], seed=2**32 - 1), var_generate(var, vae, [1], generator=g))


# ---- 2, 3. images: 16 bits, EXIF orientation, unreadable files -------------------------------------------------
def png_16bit_rgb(path, rgb_HW3: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL cannot write one)."""
    h, w, _ = rgb_HW3.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + rgb_HW3[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_not_clipped_for_image_and_training(tmp_path):
    grey = tmp_path / "data" / "cat" / "grey.png"
    grey.parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 32896, np.uint16)).save(grey)  # 32896 / 257 = 128
    colour = tmp_path / "data" / "cat" / "colour.png"
    png_16bit_rgb(colour, np.full((16, 16, 3), 32896, np.uint16))
    for path in (grey, colour):
        assert np.asarray(open_rgb(path)).max() == 128, path
        assert abs(load_image(path, 8)[0].mean().item()) < 0.01  # mid grey is 0 in [-1, 1], not white (1)
    data = ImageFolder(tmp_path / "data", ImageTransform(8, train=False))
    for i in range(len(data)):
        assert abs(data[i, 0][0].mean().item()) < 0.01


def test_phone_photos_are_edited_upright(tmp_path):
    """EXIF orientation 6: stored 40 wide and 20 high, shown turned 90 degrees clockwise (20 wide, 40 high)."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # the left half of the stored pixels is the top of the picture shown
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    shown = np.asarray(open_rgb(path))
    assert shown.shape == (40, 20, 3)
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50
    _, size = load_image(path, 8)
    assert size == (20, 40)  # a --mask box is in the pixels of the picture shown


def test_edit_images_must_be_floats_in_minus_one_to_one(pair):
    vae, _ = pair
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    for image, message in [(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floats in \\[-1, 1\\], got torch.uint8"),
                           (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
                           (torch.full((1, 3, 8, 8), 200.0), "x / 127.5 - 1")]:
        with pytest.raises(ValueError, match=message):
            make_edit(vae, image, mask)
    make_edit(vae, torch.rand(1, 3, 8, 8) * 2 - 1, mask)


def make_image(tmp_path):
    path = tmp_path / "dog.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("image, mask, message", [
    ("folder", "0,0,4,4", "--image .* is a folder"),
    ("text", "0,0,4,4", "--image .* cannot be read as an image"),
    ("truncated", "0,0,4,4", "--image .* cannot be read as an image"),
    ("missing", "0,0,4,4", "--image .* does not exist"),
    ("bomb", "0,0,4,4", "--image .* is too large to decode safely"),
    ("dog", "4.5,4,20,20", "--mask '4.5,4,20,20' is neither a mask file nor a box"),
    ("dog", "4,4,20", "neither a mask file nor a box"), ("dog", "a,b,c,d", "neither a mask file nor a box"),
    ("dog", "-4,0,10,10", "--mask box -4,0,10,10 must satisfy 0 <= x0 < x1 <= 32"),
    ("dog", "0,0,40,10", "must satisfy"), ("dog", "nomask.png", "--mask .*nomask.png does not exist"),
])
def test_bad_images_and_masks_exit_2_naming_the_flag_before_loading(image, mask, message, tmp_path, capsys,
                                                                   monkeypatch):
    path = tmp_path / image
    if image == "folder":
        path.mkdir()
    elif image == "text":
        path.write_text("not an image")
    elif image == "truncated":
        path.write_bytes(make_image(tmp_path).read_bytes()[:60])
    elif image == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 32 x 32 image is 5 times that: a "bomb"
        path = make_image(tmp_path)
    elif image == "dog":
        path = make_image(tmp_path)
    if mask == "nomask.png":
        mask = str(tmp_path / mask)
    code, err = exit_status(infer_CoDe, small_args(missing_ckpts(tmp_path), "--image", str(path), f"--mask={mask}",
                                                   "--class_labels", "1", "--output", str(tmp_path / "g.png")), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_a_box_with_spaces_is_a_box(small_ckpts, tmp_path):
    out = tmp_path / "g.png"
    infer_CoDe.main(infer_CoDe.parse_args(small_args(small_ckpts, "--image", str(make_image(tmp_path)), "--mask",
                                                     "4, 4, 20, 20", "--class_labels", "1", "--output", str(out))))
    assert out.is_file()


# ---- checkpoints, outputs, devices, numbers ------------------------------------------------------------------
def test_checkpoint_folder_and_nan_weights_exit_2(small_ckpts, tmp_path, capsys):
    code, err = exit_status(infer_CoDe, small_args({**small_ckpts, "drafter": tmp_path}, "--output",
                                                   str(tmp_path / "g.png")), capsys)
    assert code == 2 and f"checkpoint {tmp_path} is a folder, not a file" in err
    sd = torch.load(small_ckpts["drafter"], weights_only=True)
    sd = sd.get("model", sd)
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1 and "mask" not in k)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    code, err = exit_status(infer_CoDe, small_args({**small_ckpts, "drafter": tmp_path / "nan.pth"}, "--output",
                                                   str(tmp_path / "g.png")), capsys)
    assert code == 2 and f"holds NaN weights in 1 tensors ({name})" in err


@pytest.mark.parametrize("output, message", [
    ("", "--output '' is empty"), ("EXISTING", "is a folder"), ("newdir/", "--output 'newdir/' is a folder"),
    ("grid.foo", ".foo is not an image type"), ("grid", "no suffix is not an image type"),
])
def test_bad_output_names_exit_2_before_loading(output, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTING").mkdir()
    for module in (infer_CoDe, infer_original):
        argv = small_args(missing_ckpts(tmp_path), "--output", output) if module is infer_CoDe else \
            ["--model_ckpt", str(tmp_path / "missing.pth"), "--device", "cpu", "--output", output]
        code, err = exit_status(module, argv, capsys)
        assert code == 2 and message in err, err
    assert not (tmp_path / "newdir").exists()


def test_output_suffix_decides_the_format(small_ckpts, tmp_path):
    for name, magic in (("grid.jpg", b"\xff\xd8"), ("grid.png", b"\x89PNG")):
        infer_CoDe.main(infer_CoDe.parse_args(small_args(small_ckpts, "--class_labels", "1", "--output",
                                                         str(tmp_path / name))))
        assert (tmp_path / name).read_bytes()[:2] == magic[:2]


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_unsupported_devices_exit_2(device, tmp_path, capsys):
    code, err = exit_status(infer_original, ["--device", device, "--output", str(tmp_path / "g.png")], capsys)
    assert code == 2 and f"--device {device}: only cuda, cuda:N and cpu are supported" in err


@pytest.mark.parametrize("flag, value", [("--temperature", "1e-45"), ("--temperature", "1e300"),
                                         ("--cfg", "1e308"), ("--temperature", "1.1,1e-45,1,1")])
def test_extreme_numbers_exit_2_before_generating(small_ckpts, flag, value, tmp_path, capsys):
    code, err = exit_status(infer_CoDe, small_args(small_ckpts, flag, value, "--output", str(tmp_path / "g.png")),
                            capsys)
    assert code == 2 and err.startswith(f"error: {flag} must be")
    assert not (tmp_path / "g.png").exists()


# ---- run failures: memory, disk, Ctrl-C ---------------------------------------------------------------------
def cpu_out_of_memory(*args, **kwargs):
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 1099511627776 bytes.")


def test_out_of_memory_is_one_line_exit_1_not_blamed_on_the_fast_path(small_ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(FastSteps, "_build", cpu_out_of_memory)
    code, err = exit_status(sample_CoDe, sample_args(small_ckpts, tmp_path / "s", "--classes", "1", "--per_class",
                                                     "1", "--batch_size", "7"), capsys)
    err = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 1 and err.startswith("error: out of memory") and "--batch_size (now 7)" in err
    assert "fast path" not in err
    monkeypatch.setattr(torch.nn.Linear, "forward", cpu_out_of_memory)
    code, err = exit_status(infer_CoDe, small_args(small_ckpts, "--class_labels", "1", "--output",
                                                   str(tmp_path / "g.png")), capsys)
    assert code == 1 and err.startswith("error: out of memory") and len(err.strip().splitlines()) == 1


def test_other_fast_path_failures_still_name_the_fast_path(pair, monkeypatch):
    vae, var = pair

    def broken(*args, **kwargs):
        raise RuntimeError("a compiler bug")
    monkeypatch.setattr(FastSteps, "_build", broken)
    decoder = CollaborativeDecoder(vae, [var])
    with pytest.raises(FastPathError, match="failed to compile or capture"):
        decoder([1], seed=0, fast=FastPath(decoder, check=False))


def test_a_failed_write_names_the_file(tmp_path):
    def full(f):
        raise OSError(27, "File too large")
    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "samples_4x8x8x3.npz", full)
    assert str(tmp_path / "samples_4x8x8x3.npz") in str(e.value) and e.value.errno == 27
    assert os.listdir(tmp_path) == []


def test_ctrl_c_exits_130_with_one_line(capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        exit_on_error(interrupted, None)
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.startswith("interrupted") and len(err.strip().splitlines()) == 1


# ---- 5, 7. one run per folder, only our own temporaries ----------------------------------------------------------
def test_a_folder_is_held_by_one_run_at_a_time(tmp_path):
    with FolderLock(tmp_path / "out", "--output_path") as held:
        text = held.path.read_text()
        assert f'"pid": {os.getpid()}' in text
        with pytest.raises(LockError, match=f"in use by another run \\(pid {os.getpid()} on .*\\): wait for it to "
                                            "finish, or use another --output_path"):
            FolderLock(tmp_path / "out", "--output_path").acquire()
        FolderLock(tmp_path / "out", active=False).acquire()  # a torchrun rank other than 0 takes no lock
    assert not held.path.exists()
    # a lock file whose owner died (no flock on it any more) is taken over
    (tmp_path / "out" / ".lock").write_text('{"pid": 999999999, "host": "elsewhere", "since": "yesterday"}')
    with FolderLock(tmp_path / "out"):
        pass


def test_a_second_sampling_run_in_a_held_folder_exits_2(small_ckpts, tmp_path, capsys):
    with FolderLock(tmp_path / "s"):
        code, err = exit_status(sample_CoDe, sample_args(small_ckpts, tmp_path / "s", "--classes", "1", "--per_class",
                                                         "1", "--seed", "3"), capsys)
    assert code == 2 and "is in use by another run" in err
    assert not (tmp_path / "s" / "run.json").exists()


def test_only_our_own_temporary_files_are_removed(tmp_path):
    folder = SampleFolder(tmp_path)
    user = [tmp_path / ".thesis.draft.tmp", tmp_path / ".notes.abcdefgh.tmp", tmp_path / "images" / ".x.tmp"]
    ours = [tmp_path / ".run.json.abcd1234.tmp", tmp_path / ".samples_4x8x8x3.npz.k_9zzzzz.tmp",
            tmp_path / "shards" / ".0001_0000+4.npz.q1w2e3r4.tmp", tmp_path / "images" / ".0001_0000.png.a1b2c3d4.tmp"]
    for p in user + ours:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    assert sorted(folder.prepare()) == sorted(ours)
    assert all(p.exists() for p in user) and not any(p.exists() for p in ours)
