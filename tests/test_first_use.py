"""What a newcomer meets first: missing weights, fixes that can be typed, the miniature through the real scripts
(--miniature), the benchmark's smoke run, and bad input on two ranks."""
import logging
import multiprocessing
import os
import re
import runpy
import socket
import sys

import huggingface_hub
import huggingface_hub.constants as c
import numpy as np
import pytest
import torch

import infer_CoDe
import infer_original
import sample_CoDe
from benchmarks import benchmark
from cli.args import UsageError, exit_on_error, setup_logging
from cli.checkpoints import draft_steps
from cli.miniature import MINIATURE_DIR
from code import CollaborativeDecoder
from conftest import ROOT
from tiny import output_to
from models import load_vae, load_var
from utils.hub import download_command
from utils.images import read_png


def run(module, argv):
    return module.main(module.parse_args(argv))


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, online mode; returns the cache folder."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", fail)


@pytest.fixture
def hub_calls(monkeypatch):
    """hf_hub_download spied on: cache look-ups pass through; a download logs huggingface_hub's retry lines and
    fails as it does without a connection. Returns the keyword arguments of every call."""
    real, calls = huggingface_hub.hf_hub_download, []

    def spy(**kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            return real(**kwargs)
        http = logging.getLogger("huggingface_hub.utils._http")
        for i in range(1, 6):
            http.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD ...")
            http.warning(f"Retrying in {2 ** (i - 1)}s [Retry {i}/5].")
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return calls


# ---- missing weights ---------------------------------------------------------------------------------
def test_missing_weights_without_network_one_line_naming_every_place(empty_hub, no_network, hub_calls, tmp_path,
                                                                      capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(SystemExit) as e:
        exit_on_error(infer_original.main, infer_original.parse_args(
            ["--model_depth", "30", "--ckpt_dir", str(folder), "--device", "cpu", "--output", str(tmp_path / "g.png")]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: checkpoint var_d30.pth not found: looked at ")
    for place in (f"{os.getcwd()}/var_d30.pth", f"{folder}/var_d30.pth (--ckpt_dir)", f"cache {empty_hub}",
                  "FoundationVision/var on the Hub (no network", "`hf download FoundationVision/var var_d30.pth`"):
        assert place in err
    assert [c.get("local_files_only") for c in hub_calls] == [True]  # the cache only: no download was tried


def test_a_failing_download_says_one_line_while_it_tries(empty_hub, hub_calls, monkeypatch, tmp_path, capsys, caplog):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # the host resolves
    setup_logging()
    with caplog.at_level(logging.INFO), pytest.raises(FileNotFoundError) as e:
        run(infer_CoDe, ["--device", "cpu", "--output", str(tmp_path / "g.png")])
    assert [c.get("local_files_only", False) for c in hub_calls] == [True, False]
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Retry" in m or "thrown while requesting" in m]
    assert "downloading drafter_8.pth from the Hugging Face repo Zigeng/VAR_CoDe ..." in messages
    assert "Retry" not in capsys.readouterr().err
    assert "Zigeng/VAR_CoDe on the Hub (LocalEntryNotFoundError: cannot find" in str(e.value)


@pytest.mark.parametrize("version, command", [("2.4.0", "hf download"), ("0.34.1", "hf download"),
                                              ("0.20.3", "huggingface-cli download")])
def test_the_download_command_is_the_installed_hubs(monkeypatch, version, command):
    monkeypatch.setattr(huggingface_hub, "__version__", version)
    assert download_command("FoundationVision/var", "var_d16.pth") == f"{command} FoundationVision/var var_d16.pth"


def test_an_unpublished_name_is_not_looked_for_on_the_hub(empty_hub, hub_calls, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"var_d6\.pth not found: .* it is not a published file "
                                                r"\(FoundationVision/var: .*var_d\{16,20,24,30\}\.pth"):
        run(infer_original, ["--model_depth", "6", "--device", "cpu", "--output", str(tmp_path / "g.png")])
    assert hub_calls == []


@pytest.mark.parametrize("module", [infer_original, infer_CoDe, sample_CoDe])
def test_ckpt_dir_must_exist(module, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--ckpt_dir", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    assert f"argument --ckpt_dir: {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


# ---- fixes that can be typed -------------------------------------------------------------------------
def test_the_depth_fix_in_the_message_works(tmp_path):
    flags = ["--model_ckpt", str(MINIATURE_DIR / "var_d6.pth"), "--vae_ckpt", str(MINIATURE_DIR / "vqvae.pth"),
             "--class_labels", "0", "--device", "cpu", "--output", str(tmp_path / "g.png")]
    with pytest.raises(UsageError) as e:
        run(infer_original, flags + ["--model_depth", "30"])
    fix = re.search(r"pass (--model_depth \d+)", str(e.value))
    assert fix is not None and fix[1] == "--model_depth 6"
    run(infer_original, flags + fix[1].split())
    assert (tmp_path / "g.png").is_file()


def test_any_depth_is_found_in_ckpt_dir(tmp_path):
    run(infer_original, ["--model_depth", "2", "--ckpt_dir", str(MINIATURE_DIR), "--vae_ckpt",
                         str(MINIATURE_DIR / "vqvae.pth"), "--class_labels", "1", "--device", "cpu", "--output",
                         str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").is_file()


def test_a_published_name_with_another_depth_inside_names_the_flag_to_use(tmp_path):
    (tmp_path / "var_d30.pth").write_bytes((MINIATURE_DIR / "var_d6.pth").read_bytes())
    with pytest.raises(UsageError, match=r"holds a depth-6 VAR, not the depth 30 its name says: give it as "
                                         r"--model_ckpt .*var_d30\.pth"):
        run(infer_original, ["--ckpt_dir", str(tmp_path), "--device", "cpu", "--output", str(tmp_path / "g.png")])


# ---- the miniature through the real scripts ----------------------------------------------------------
def miniature_decoder(*names, draft_steps=()):
    models = [load_var(MINIATURE_DIR / n).eval() for n in names]
    vae = load_vae(MINIATURE_DIR / "vqvae.pth", patch_nums=models[0].config.patch_nums)
    return CollaborativeDecoder(vae, models, list(draft_steps))


def upscaled_grid(images, times=4):
    grid = torch.cat([torch.cat(list(images[i:i + 8]), 2) for i in range(0, 8, 8)], 1)  # the first row
    grid = grid.repeat_interleave(times, 1).repeat_interleave(times, 2)
    return grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("module, names, draft_steps", [(infer_CoDe, ("drafter_3.pth", "refiner_3.pth"), [3]),
                                                         (infer_original, ("var_d6.pth",), [])])
def test_miniature_flag_in_the_inference_scripts(module, names, draft_steps, tmp_path, capsys):
    out = tmp_path / "g.png"
    run(module, ["--miniature", "--device", "cpu", "--output", str(out)])
    expected = miniature_decoder(*names, draft_steps=draft_steps)(list(range(10)), seed=42, cfg=2.0, top_k=0,
                                                                  top_p=1.0, temperature=1.0)
    grid = read_png(out)
    assert grid.shape == (2 * 16 * 4, 8 * 16 * 4, 3)  # 10 images, 8 per row, 4 times enlarged
    assert np.array_equal(grid[:64], upscaled_grid(expected))
    assert f"{' -> '.join(names)}: 10 images of 16x16" in capsys.readouterr().out


def test_miniature_flag_in_sample_code(tmp_path):
    out = run(sample_CoDe, ["--miniature", "--device", "cpu", "--per_class", "1", "--no_png", "--output_path",
                            str(tmp_path / "s")])
    arr = np.load(out)["arr_0"]
    assert arr.shape == (10, 16, 16, 3)
    args = sample_CoDe.parse_args(["--miniature"])
    assert (args.cfg, args.top_k, args.top_p, args.temperature, args.draft_steps) == (2.0, 0, 1.0, 1.0, 3)
    assert args.output_path == "samples/miniature"


def test_explicit_flags_win_over_miniature():
    args = infer_CoDe.parse_args(["--miniature", "--cfg", "3", "--class_labels", "4", "--upscale", "1",
                                  "--draft_steps", "2", "--training_free"])
    assert (args.cfg, args.class_labels, args.upscale, args.draft_steps) == (3.0, [4], 1, 2)
    plain = infer_CoDe.parse_args([])
    assert (plain.cfg, draft_steps(plain), plain.upscale, plain.ckpt_dir) == (4.0, 8, 1, None)


def test_miniature_without_a_fine_tuned_pair_says_what_works(tmp_path):
    argv = ["--miniature", "--draft_steps", "2", "--device", "cpu", "--output", str(tmp_path / "g.png")]
    with pytest.raises(UsageError, match=r"no fine-tuned drafter for --draft_steps 2 .*fine-tuned N there: 3\): "
                                         r"pass --draft_steps 3 or add --training_free"):
        run(infer_CoDe, argv)
    run(infer_CoDe, argv + ["--training_free"])
    assert (tmp_path / "g.png").is_file()
    for name in ("drafter_2.pth", "drafter_2_s1.pth"):  # a pipeline's folder: seed 1's runs are marked
        (tmp_path / name).touch()
    with pytest.raises(UsageError, match=r"fine-tuned N there: 2\): pass --draft_steps 2 or"):
        run(infer_CoDe, ["--miniature", "--ckpt_dir", str(tmp_path), "--device", "cpu"])


def test_class_labels_help_mentions_ranges(capsys):
    with pytest.raises(SystemExit):
        infer_CoDe.parse_args(["--help"])
    help_text = re.search(r"\n  --class_labels .*?(?=\n  --)", capsys.readouterr().out, re.S)[0]
    assert "0-9" in help_text


# ---- the benchmark's smoke run -----------------------------------------------------------------------
def test_benchmark_tiny_is_a_small_run_with_a_progress_bar(capsys):
    args = benchmark.parse_args(["--tiny", "--device", "cpu"])
    assert (args.cases, args.batch_size, args.warmup, args.repeats) == (["var-d16", "code-8"], 2, 1, 1)
    full = benchmark.parse_args(["--device", "cuda"])
    assert (len(full.cases), full.batch_size, full.warmup, full.repeats) == (6, 64, 2, 5)
    report = benchmark.main(["--tiny", "--device", "cpu", "--no-eager"])  # the documented command, fast path only
    assert "| var-d16 | fast |" in report and "| code-8 | fast |" in report and "batch 2 " in report
    assert "| eager |" not in report
    assert "cases: 100%" in capsys.readouterr().err


# ---- two ranks: bad input printed once ----------------------------------------------------------------
def bad_input(args):
    raise UsageError("--thing is wrong: pass --thing 1")


def failed_write(args):
    raise OSError("No space left on device")


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_bad_input_is_printed_by_rank_0_only(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as e:
        exit_on_error(bad_input, None)
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: --thing is wrong: pass --thing 1\n" if printed else "")


def test_a_failed_run_is_printed_by_every_rank_with_its_rank(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as e:
        exit_on_error(failed_write, None)
    assert e.value.code == 1 and capsys.readouterr().err == "error: rank 1: No space left on device\n"


def script_as_rank(rank: int, port: int, script: str, argv: list[str], out: str) -> None:
    """A forked child as torchrun starts a worker of 2 (its environment; no interpreter start), running the script
    as __main__ with its output in `out`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    output_to(out)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def test_two_ranks_missing_weights_one_message_workers_exit_2(offline_hf_cache, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--ckpt_dir", str(tmp_path / "empty"), "--output_path", str(tmp_path / "s")]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = str(ROOT / "sample_CoDe.py")
    ranks = [multiprocessing.get_context("fork").Process(
        target=script_as_rank, args=(r, port, script, argv, str(tmp_path / f"{r}.txt"))) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(120)
    output = "".join((tmp_path / f"{r}.txt").read_text() for r in range(2))
    assert [p.exitcode for p in ranks] == [2, 2], output
    assert output.count("drafter_8.pth not found") == 1 and "error: checkpoint drafter_8.pth not found" in output, output
    assert not (tmp_path / "s").exists()
