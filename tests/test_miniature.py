"""The offline miniature (issue 6): the data set, the tokenizer's training, the quantiser's training forward,
the shipped models, the evaluation and the whole pipeline on a toy budget."""
import csv
import importlib.util
import json
import math
import multiprocessing
import pickle
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import train_vqvae
from cli.args import UsageError, exit_code
from code import CollaborativeDecoder
from tiny import TINY_VAE, randomize_
from miniature import demo, pipeline, report, shapes
from miniature import evaluate as evaluate_miniature
from miniature.classifier import load_classifier
from miniature.files import SHIPPED, MiniatureFiles
from miniature.metrics import accuracy, classify, frechet_distance, load_split
from miniature.stats import difference
from models import build_vae, load_vae, load_var
from training.data import scan_image_folder
from utils.images import read_png

SHIPPED_N = 3  # the fine-tuned pair kept in miniature/checkpoints


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def make_shapes(out: Path, *extra: str) -> Path:
    shapes.main(shapes.parse_args(["--out", str(out), "--train_per_class", "2", "--val_per_class", "1", "--quiet",
                                   *extra]))
    return out


def test_shapes_are_deterministic_per_image(tmp_path):
    a, b = make_shapes(tmp_path / "a"), make_shapes(tmp_path / "b")
    c = make_shapes(tmp_path / "c", "--seed", "1")
    d = make_shapes(tmp_path / "d", "--train_per_class", "1", "--val_per_class", "0")
    files = tree_bytes(a)
    assert len(files) == 30 and files == tree_bytes(b)  # same seed: byte-identical
    other = tree_bytes(c)
    assert files.keys() == other.keys() and all(files[k] != other[k] for k in files)
    assert tree_bytes(d) == {k: v for k, v in files.items() if k.startswith("train") and k.endswith("00000.png")}
    classes, samples = scan_image_folder(a / "train")
    assert classes == shapes.class_dirs() and [c for _, c in samples] == [i // 2 for i in range(20)]
    assert read_png(samples[0][0]).shape == (16, 16, 3)


def test_shapes_classes_share_colours_not_forms():
    """Pairs of classes have one hue, so a sample's form decides its class; every form draws something."""
    hues = [c.hue for c in shapes.CLASSES]
    assert len(set(hues)) == 5 and all(hues.count(h) == 2 for h in hues)
    rng = np.random.default_rng(0)
    areas = [shapes.form_alpha(c.form, 32, rng).sum() for c in shapes.CLASSES]
    assert min(areas) > 20 and len({round(a) for a in areas}) == len(areas)
    with pytest.raises(ValueError, match="unknown form"):
        shapes.form_alpha("hexagon", 16, rng)


def test_quantizer_forward_is_f_to_tokens_with_gradients():
    torch.manual_seed(0)
    vae = randomize_(build_vae(**TINY_VAE), seed=3, std=0.1)
    q = vae.quantize
    f = vae.encode_latent(torch.rand(3, 3, 8, 8) * 2 - 1).detach().requires_grad_(True)
    q.eval()
    out = q(f)
    assert torch.equal(out.f_hat, q.f_to_tokens(f, return_fhat=True)[-1])  # the same value, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, q.f_to_tokens(f)))
    assert torch.equal(q.ema_vocab_hit_SV, torch.zeros_like(q.ema_vocab_hit_SV))  # eval mode keeps no statistics
    w = torch.randn_like(f)
    (out.f_hat * w).sum().backward(retain_graph=True)
    assert torch.equal(f.grad, w)  # straight through: d f_hat / d f = identity
    assert q.embedding.weight.grad is None
    f.grad = None
    out.loss.backward()
    assert f.grad.abs().sum() > 0  # commitment reaches the encoder
    assert q.embedding.weight.grad.abs().sum() > 0 and q.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0
    assert 0 < float(out.usage.min()) and float(out.usage.max()) <= 1 and out.usage.shape == (4,)
    q.train()
    q(f.detach())
    assert (q.ema_vocab_hit_SV.sum(1) > 0).all()
    with pytest.raises(ValueError, match="last patch size"):
        q(torch.zeros(1, 8, 5, 5))


VQ_FLAGS = ["--ch", "32", "--ch_mult", "1,1", "--vocab_size", "64", "--z_channels", "8", "--patch_nums", "1,2,4,8",
            "--batch_size", "8", "--log_every", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes.main(shapes.parse_args(["--out", str(root), "--train_per_class", "8", "--val_per_class", "2", "--quiet"]))
    return root


def train_vq(data: Path, out: Path, *extra: str) -> int:
    return exit_code(train_vqvae.main, train_vqvae.parse_args(["--data_path", str(data), "--output_dir", str(out),
                                                               *VQ_FLAGS, *extra]))


def recon_errors(vae, images: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = vae.tokens_to_img(vae.img_to_tokens(images))
    return float((out - images).abs().mean()), float((out - images).square().mean())


def test_train_vqvae_reconstruction_error_falls(shapes_data, tmp_path):
    argv = ["--data_path", str(shapes_data), "--output_dir", str(tmp_path), *VQ_FLAGS, "--max_steps", "60", "--lr", "8e-2",
            "--batch_size", "16"]  # peak lr 8e-2 x 16 / 256 = 5e-3
    args = train_vqvae.parse_args(argv)
    torch.manual_seed(args.seed)  # as main does: the run's starting point
    fresh = train_vqvae.new_vqvae(args.config).eval()
    assert exit_code(train_vqvae.main, args) == 0
    trained = load_vae(tmp_path / "vqvae.pth")  # the export carries its config: patch_nums come from the file
    assert trained.patch_nums == (1, 2, 4, 8) and trained.config.image_size == 16
    val = load_split(shapes_data / "val", 16)[0] * 2 - 1
    (l1_0, mse_0), (l1, mse) = recon_errors(fresh, val), recon_errors(trained, val)
    assert l1 < 0.8 * l1_0 and mse < 0.6 * mse_0, (l1_0, l1, mse_0, mse)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 65, 5)) and {f"use{k}" for k in range(4)} <= log[-1].keys()


def test_train_vqvae_resume_is_exact(shapes_data, tmp_path, capsys):
    assert train_vq(shapes_data, tmp_path / "straight", "--max_steps", "4") == 0
    assert train_vq(shapes_data, tmp_path / "split", "--max_steps", "4", "--stop_at", "2") == 0
    assert not (tmp_path / "split" / "vqvae.pth").exists()
    assert train_vq(shapes_data, tmp_path / "split", "--max_steps", "4", "--resume", "auto") == 0
    a, b = (torch.load(tmp_path / d / "vqvae.pth", weights_only=True)["model"] for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another architecture cannot continue this run
    assert train_vq(shapes_data, tmp_path / "split", "--max_steps", "4", "--resume", "auto", "--vocab_size", "32") == 2
    assert train_vq(shapes_data, tmp_path / "sharded", "--max_steps", "4", "--shard", "fsdp") == 2
    assert "--shard fsdp shards VAR models (each block, then the rest); train the vqvae without it" in \
        capsys.readouterr().err


def test_frechet_distance_of_shifted_gaussians():
    x = np.random.default_rng(0).normal(size=(500, 8)) @ np.diag(np.arange(1.0, 9.0))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + 3.0) == pytest.approx(9.0 * 8, rel=1e-6)
    assert frechet_distance(x, 2 * x) > 10


@pytest.fixture(scope="module")
def shipped():
    files = MiniatureFiles(SHIPPED)
    return files, load_vae(files.vqvae), load_classifier(files.classifier)


@pytest.fixture(scope="module")
def shipped_accuracy(shipped):
    """How often the shipped classifier names the requested class, 10 samples per class and chain (chance: 10%).
    Other sampling seeds move these by a few points: the floors below leave room for that."""
    files, vae, clf = shipped
    labels = torch.arange(10).repeat(10)
    chains = {"large": ([files.large], []), "small": ([files.small], []),
              "training-free": ([files.large, files.small], [SHIPPED_N]),
              "fine-tuned": ([files.drafter(SHIPPED_N), files.refiner(SHIPPED_N)], [SHIPPED_N])}
    out = {}
    for name, (paths, steps) in chains.items():
        images = CollaborativeDecoder(vae, [load_var(p) for p in paths], steps)(labels, seed=0, cfg=2.0, top_k=0,
                                                                               top_p=1.0)
        out[name] = accuracy(classify(clf, images)[0], labels)
    return out


@pytest.mark.parametrize("chain, floor", [("large", 0.65), ("small", 0.5), ("training-free", 0.5), ("fine-tuned", 0.6)])
def test_shipped_models_draw_the_requested_class(shipped_accuracy, chain, floor):
    """Far above chance, and above 50%: the colour alone (shared by two classes) would give 50%."""
    assert shipped_accuracy[chain] >= floor, shipped_accuracy


def test_shipped_large_model_beats_the_small_one(shipped_accuracy):
    assert shipped_accuracy["large"] > shipped_accuracy["small"] + 0.05, shipped_accuracy


def test_shipped_classifier_knows_the_real_images(shipped, shapes_data):
    _, _, clf = shipped
    classes, samples = scan_image_folder(shapes_data / "train")
    images = torch.stack([torch.tensor(read_png(p)).permute(2, 0, 1) for p, _ in samples]).float() / 255
    assert accuracy(classify(clf, images)[0], torch.tensor([c for _, c in samples])) >= 0.9


def test_demo_draws_a_grid_offline(tmp_path, capsys):
    assert demo.parse_args([]).output.startswith("outputs/")  # git ignores it; the repository root stays clean
    out = tmp_path / "grid.png"
    acc = demo.main(demo.parse_args(["--output", str(out), "--per_class", "2", "--upscale", "2"]))
    assert read_png(out).shape == (2 * (2 * 17 + 1), 2 * (10 * 17 + 1), 3) and acc >= 0.3
    assert "drafter_3.pth -> refiner_3.pth" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no fine-tuned pair for N=1"):
        demo.main(demo.parse_args(["--output", str(out), "--draft_steps", "1"]))
    with pytest.raises(UsageError, match="exceeds"):
        demo.main(demo.parse_args(["--output", str(out), "--draft_steps", "7"]))


CELLS = [f"CoDe N=2: {d} drafter, {r} refiner" for d in ("base", "specialised") for r in ("base", "extra CE",
                                                                                             "distilled")]
CELLS[0] += " (training-free)"
CELLS[-1] += " (fine-tuned)"


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 20 samples of 128 features: singular covariances
def test_pipeline_smoke_runs_every_stage_and_resumes(tmp_path, capsys, monkeypatch):
    """In one process (--jobs 1); --jobs 2 at the end."""
    argv = ["--work", str(tmp_path / "work"), "--preset", "smoke", "--threads", "1", "--jobs", "1", "--ship",
            "--ship_draft_steps", "2", "--ship_dir", str(tmp_path / "shipped")]
    args = pipeline.parse_args(argv)
    assert pipeline.main(args) == 0
    work, ev = tmp_path / "work", tmp_path / "work" / "paper" / "eval"
    table = list(csv.reader((ev / "table.csv").read_text().splitlines()))
    assert [row[:2] for row in table] == [
        ["setting", "runs"], ["real images (train)", "1"], ["VQVAE reconstructions", "1"], ["large VAR (d6)", "2"],
        ["small VAR (d2)", "2"], *([name, "2"] for name in CELLS)]  # 2 sampling seeds; 2 fine-tuning seeds
    assert sorted(p.name for p in (work / "paper" / "ckpt").glob("*_s1.pth")) == [
        "control_2_s1.pth", "drafter_2_s1.pth", "refiner_2_s1.pth"]
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == [
        "classifier.pth", "drafter_2.pth", "refiner_2.pth", "var_d2.pth", "var_d6.pth", "vqvae.pth"]
    assert len(list(ev.glob("grid_*.png"))) == 8
    # the control sees the refiner's batches from the same weights: the same cross-entropy at the first step
    first = [json.loads((work / "paper" / "runs" / f"{role}_2_s1" / "log.jsonl").read_text().splitlines()[0])
             for role in ("refiner", "control")]
    assert first[0]["ce"] == first[1]["ce"] and "kd" in first[0] and "kd" not in first[1]
    orderings = (ev / "orderings.md").read_text()
    assert "N=2: fine-tuning beats training-free CoDe" in orderings
    assert "the large model beats the small one" in orderings
    effects = (ev / "effects.md").read_text()
    assert all(f"| 2 | {label} |" in effects for label, _ in report.EFFECTS)
    drafter, distill = report.EFFECTS[0][0], report.EFFECTS[2][0]
    assert f"| 2 | {drafter} | 2 + 2 |" in effects and f"| 2 | {distill} | 2 |" in effects  # seeds + sampling runs
    assert read_png(ev / "overview.png").shape == (4 * (8 * 17 + 1), 4 * (10 * 17 + 1), 3)  # 8 settings x 10 classes
    assert (ev / "tradeoff.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    assert len((ev / "results.jsonl").read_text().splitlines()) == 18  # 6 untrained + 5 cells x 2 + 2 references
    assert json.loads((ev / "meta.json").read_text())["refiner"] == {"lr": "0.0016", "steps": 1, "wd": 0.0}
    capsys.readouterr()
    assert pipeline.main(pipeline.parse_args(argv[:4])) == 0  # everything exists: only the tables are made again
    out = capsys.readouterr().out
    assert "all stages existed" in out and "(fine-tuning seed" not in out  # no run was repeated
    assert len((ev / "results.jsonl").read_text().splitlines()) == 18
    # the tables rebuild from the raw results alone
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "meta.json").write_bytes((ev / "meta.json").read_bytes())
    lines = (ev / "results.jsonl").read_text().splitlines()
    other = json.loads(lines[5])
    other["config"], other["accuracy"] = "{}", 0.9  # an evaluation under other sampling settings is left out
    # a run listed twice counts once
    (copy / "results.jsonl").write_text("\n".join([json.dumps(other), *lines, *lines[:3]]) + "\n")
    assert report.main(report.parse_args([str(copy)])) == 0
    for name in ("table.md", "table.csv", "factorial.md", "effects.md", "orderings.md"):
        assert (copy / name).read_text() == (ev / name).read_text(), name
    assert report.main(report.parse_args([str(tmp_path / "empty")])) == 2
    # --jobs 2: what goes to a spawned worker pickles; worker processes (forked here: no interpreter starts) give
    # the in-process numbers
    sizes = pipeline.sizes_of(args)
    files = MiniatureFiles(work / "ckpt", sizes.large_depth, sizes.small_depth)
    tasks = [*sum(pipeline.waves(work, sizes, 1), []), *pipeline.finetuning_wave(work / "data", files, work / "paper",
                                                                                sizes, pipeline.RECIPES["paper"])]
    assert len(tasks) == 11 and all(pickle.loads(pickle.dumps(t)) == t for t in tasks)
    args.jobs = 2
    paper = MiniatureFiles(work / "paper" / "ckpt", sizes.large_depth, sizes.small_depth)
    ev_args = evaluate_miniature.parse_args([*pipeline.evaluation_argv(args, sizes, paper, work / "paper"), "--out",
                                             str(tmp_path / "jobs2"), "--train_seeds", "1", "--seeds", "0"])
    assert pickle.loads(pickle.dumps((ev_args, paper))) == (ev_args, paper)
    monkeypatch.setattr(evaluate_miniature, "get_context", lambda method: multiprocessing.get_context("fork"))
    evaluate_miniature.main(ev_args)
    def numbers(text: str) -> dict[tuple, dict]:  # each run's results but its times, by setting and seeds
        runs = [{k: v for k, v in json.loads(line).items() if not k.startswith("ms_")} for line in text.splitlines()]
        return {(r["name"], r["train_seed"], r["sample_seed"]): r for r in runs}

    written = (tmp_path / "jobs2" / "results.jsonl").read_text()
    in_workers, in_process = numbers(written), numbers((ev / "results.jsonl").read_text())
    assert len(written.splitlines()) == len(in_workers) == 10 and all(in_process[k] == r for k, r in in_workers.items())


def fake_runs(values: dict[tuple[str, str], list[float]], base: list[float]) -> list[report.Run]:
    """Accuracy per fine-tuning seed of every trained cell at N=3, and per sampling seed of the training-free one."""
    runs = [report.Run(report.cell_name(3, "base", "base"), "code", 3, None, 1000 * i, v, 0.0, 0.0, 0.0, "{}",
                       "base", "base") for i, v in enumerate(base)]
    for (d, r), per in values.items():
        runs += [report.Run(report.cell_name(3, d, r), "code", 3, s, 0, v, 0.0, 0.0, 0.0, "{}", d, r)
                 for s, v in enumerate(per)]
    return runs


def test_effects_are_paired_by_fine_tuning_seed():
    """Each seed's trained cells share a shift (the seed's luck): a contrast of trained cells cancels it exactly;
    the training-free cell, where it enters, adds its own runs (Welch)."""
    shift = [0.0, 0.2, -0.1, 0.05, 0.3]
    level = {("base", "extra CE"): 0.7, ("base", "distilled"): 0.72, ("specialised", "base"): 0.68,
             ("specialised", "extra CE"): 0.71, ("specialised", "distilled"): 0.75}
    runs = fake_runs({cell: [v + s for s in shift] for cell, v in level.items()}, [0.64, 0.65, 0.66])
    labels = dict(report.EFFECTS)
    distill, seeds, untrained = report.effect(runs, 3, labels[
        "distillation beyond extra training (distilled - extra CE refiner, mean over the 2 drafters)"], "accuracy")
    assert (seeds, untrained) == (5, 0) and distill.mean == pytest.approx(0.03) and distill.half < 1e-9
    whole, seeds, untrained = report.effect(runs, 3, labels[
        "the paper's fine-tuning (specialised + distilled - training-free)"], "accuracy")
    expected = difference([0.75 + s for s in shift], [0.64, 0.65, 0.66])
    assert (seeds, untrained) == (5, 3) and whole.mean == pytest.approx(0.1 + sum(shift) / 5)
    assert whole.half == pytest.approx(expected.half)
    inter, _, _ = report.effect(runs, 3, labels["interaction: drafter specialisation x extra training"], "accuracy")
    assert inter.mean == pytest.approx(0.71 - 0.68 - 0.7 + 0.65 - sum(shift) / 5)
    assert report.effect(runs[:3], 3, labels["interaction: drafter specialisation x distillation"], "accuracy") is None


def test_runs_recorded_before_a_sampling_setting_existed_count_with_its_default(tmp_path):
    """A results.jsonl grown over versions: a run without `more_smooth` is a run with more_smooth false."""
    old = {"per_class": 300, "cfg": 2.0, "top_k": 0}
    run = report.Run("large VAR (d6)", "large", None, None, 0, 0.7, 22.0, 1.0, 1.0, json.dumps(old))
    now = replace(run, sample_seed=1000, config=json.dumps({**old, "more_smooth": False}, sort_keys=True))
    smooth = replace(run, sample_seed=2000, config=json.dumps({**old, "more_smooth": True}))
    again = replace(run, config=json.dumps({**old, "more_smooth": False}))  # the first run, recorded again
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in (run, now, smooth, again)))
    runs = report.load_runs(tmp_path / "results.jsonl")
    assert [r.sample_seed for r in runs] == [0, 1000, 2000]
    assert runs[0].config == runs[1].config != runs[2].config


@pytest.mark.filterwarnings("error")
def test_one_run_has_no_interval_and_no_warning():
    one = difference([0.7], [0.64, 0.65, 0.66])
    assert one.mean == pytest.approx(0.05) and math.isnan(one.half) and one.text() == "0.05"
    assert math.isnan(difference([0.64, 0.65, 0.66], [0.7]).half)


def test_pipeline_recipes_scale_the_pre_training():
    full = pipeline.PRESETS["full"]
    assert pipeline.RECIPES["paper"].steps(full) == (100, 500) and pipeline.RECIPES["strong"].steps(full) == (200, 1000)
    note = pipeline.recipe_note("paper", full)
    assert (note["drafter"]["lr"], note["refiner"]["lr"], note["pretraining_lr"]) == ("0.00016", "0.0016", "0.016")
    assert pipeline.recipe_note("strong", full)["drafter"]["lr"] == "0.002"
    files = MiniatureFiles(Path("ckpt"))
    refiner = pipeline.refiner_argv(Path("d"), files, Path("o"), 3, full, pipeline.RECIPES["paper"], 4)
    control = pipeline.control_argv(Path("d"), files, Path("o"), 3, full, pipeline.RECIPES["paper"], 4)
    pairs = lambda argv: {(a, b) for a, b in zip(argv[::2], argv[1::2])}  # noqa: E731
    assert pairs(refiner) - pairs(control) == {("--teacher", "ckpt/var_d6.pth"), ("--teacher_depth", "6")}
    assert pairs(control) - pairs(refiner) == {("--kd_weight", "0"), ("--ce_weight", "1")}


def test_pipeline_grid_flags_narrow_the_preset(capsys):
    """--draft_steps 3 --train_seeds 0-2: the strong recipe's committed grid, and nothing else, is trained."""
    sizes = pipeline.sizes_of(pipeline.parse_args(["--draft_steps", "3", "--train_seeds", "0-2"]))
    tasks = pipeline.finetuning_wave(Path("d"), MiniatureFiles(Path("c")), Path("w"), sizes, pipeline.RECIPES["strong"])
    assert [t.name for t in tasks] == [f"{role} N=3 seed {s}" for s in range(3) for role in ("refiner", "control",
                                                                                            "drafter")]
    assert pipeline.sizes_of(pipeline.parse_args([])) == pipeline.PRESETS["full"]
    with pytest.raises(SystemExit) as e:
        pipeline.parse_args(["--draft_steps", "3,6"])
    assert e.value.code == 2 and "each N must be in 1..5" in capsys.readouterr().err


def test_evaluate_rejects_a_draft_step_out_of_range(tmp_path, shapes_data):
    with pytest.raises(UsageError, match="--draft_steps 6"):
        evaluate_miniature.main(evaluate_miniature.parse_args(["--data_path", str(shapes_data), "--out",
                                                                str(tmp_path), "--draft_steps", "6", "--per_class", "1"]))


@pytest.mark.parametrize("script", ["train_vqvae", "train_var", "miniature.train_classifier", "miniature.evaluate",
                                    "miniature.demo", "miniature.shapes", "miniature.pipeline", "miniature.report"])
def test_help(script, capsys):
    module = __import__(script, fromlist=["parse_args"])
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
