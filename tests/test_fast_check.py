"""The fast path's run-time check (code/fast_check.py): no false alarm on the real path, and a stop naming the pass
for each planted fast-path bug, on the CPU (steps uncaptured, or replayed through a fake graph API)."""
import json

import pytest
import torch

import code.fast as fast_mod
import infer_CoDe
import sample_CoDe
from benchmarks import fast_check_cost, gpu_check
from cli.args import published_numerics
from code import CollaborativeDecoder, FastPath, FastPathMismatch, SamplingConfig
from code.fast import FastSteps
from code.fast_check import Bounds, check_fast_path
from tiny import tiny_pair, tiny_var_like
from models import cast_linear_weights_
from models.kv_cache import KVCache
from test_fast import CODE_KW, fake_cuda_graphs
from test_sample import sample, small_argv


@pytest.fixture
def decoder():
    vae, drafter = tiny_pair(depth=2)
    return CollaborativeDecoder(vae, [drafter, tiny_var_like(vae, depth=1, seed=5)], [2])


def run_batches(decoder, path, batches=2, **kw):
    """Two batches of 3 with other labels and seeds: the second replays the steps the first built."""
    for labels, seed in (([1, 2, 3], 0), ([7, 0, 9], 5))[:batches]:
        decoder.state(labels, seed=seed, fast=path, **{**CODE_KW, **kw})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_false_alarm_over_twenty_seeds(decoder, dtype):
    if dtype != torch.float32:
        for m in decoder.models:
            cast_linear_weights_(m, dtype)
    path = FastPath(decoder, recheck_every=1)  # every batch checked
    for seed in range(20):
        labels = torch.randint(0, 10, (3,), generator=torch.Generator().manual_seed(seed)).tolist()
        decoder.state(labels, seed=seed, fast=path, **CODE_KW)
    assert len(path.reports) == 20 and all(r.passed for r in path.reports)
    report = path.reports[-1]
    assert [(p.model, p.scale, p.prefill) for p in report.passes] == [(0, 0, False), (0, 1, False), (1, 2, True),
                                                                      (1, 3, False)]
    assert max(p.logits for p in report.passes) < 1e-6 and min(p.tokens for p in report.passes) == 1.0
    exact = dtype == torch.float32  # bf16 linears: a few percent, though uncompiled steps compute the same here
    assert report.pixels < 1e-6 and report.bounds == Bounds(1e-4 if exact else 5e-2, 1.0 if exact else 0.99, 1e-4)


def test_checks_new_steps_and_then_every_n_batches(decoder):
    path = FastPath(decoder, recheck_every=3)
    for _ in range(4):
        run_batches(decoder, path, batches=1)
    assert len(path.reports) == 2  # the first batch (new steps), then the third after it
    decoder.state([1, 2], seed=0, fast=path, **CODE_KW)  # a new batch size: new steps
    decoder.state([1, 2, 3], seed=0, fast=path, **{**CODE_KW, "cfg": 0.5})  # new settings: new steps
    assert len(path.reports) == 4 and [r.batch for r in path.reports] == [3, 3, 2, 3]
    off = FastPath(decoder, check=False)
    run_batches(decoder, off)
    assert off.reports == []


def test_the_check_compares_rows_it_did_not_generate(decoder):
    """Labels and tokens rolled by one image (one position for one image): inputs the steps were not run on."""
    path = FastPath(decoder, check=False)
    state = decoder.state([1, 2, 3], seed=0, fast=path, **CODE_KW)
    report = check_fast_path(decoder, path, state, decoder_sampling())
    assert report.passed and report.images == 3
    one = decoder.state([4], seed=0, fast=path, **CODE_KW)
    assert check_fast_path(decoder, path, one, decoder_sampling()).passed


def decoder_sampling():
    return SamplingConfig(**CODE_KW)


# ---- planted bugs: each must stop the run and name the pass ------------------------------------------
def stale_inputs(monkeypatch):
    """Static next-scale input buffers never refreshed after the step's first call."""
    call = fast_mod.StaticStep.__call__

    def stale(self, cond_BD, inputs):
        if getattr(self, "ran", False):
            inputs = self.inputs
        self.ran = True
        return call(self, cond_BD, inputs)
    monkeypatch.setattr(fast_mod.StaticStep, "__call__", stale)


def stale_condition(monkeypatch):
    """Static class-condition buffers never refreshed after the step's first call."""
    call = fast_mod.StaticStep.__call__

    def stale(self, cond_BD, inputs):
        if getattr(self, "ran", False):
            cond_BD = self.cond
        self.ran = True
        return call(self, cond_BD, inputs)
    monkeypatch.setattr(fast_mod.StaticStep, "__call__", stale)


def skipped_prefill(monkeypatch):
    """The refiner's first pass runs its own scale only: the prefix never enters its cache."""
    logits = fast_mod.scale_logits

    def no_prefill(model, cond_BD, inputs, k, bg, blocks=None, head=None):
        offs = model.config.offsets
        if bg < offs[k]:
            return logits(model, cond_BD, inputs[:, offs[k] - 1:], k, offs[k], blocks, head)
        return logits(model, cond_BD, inputs, k, bg, blocks, head)
    monkeypatch.setattr(fast_mod, "scale_logits", no_prefill)


def shared_cache_view(monkeypatch):
    """Every block of a model handed the first block's view of the arena."""
    views = FastSteps._views

    def shared(self, model, batch, length):
        first = views(self, model, batch, length)[0]
        return [KVCache.over(first.k, first.v) for _ in model.blocks]
    monkeypatch.setattr(FastSteps, "_views", shared)


def stale_noise(monkeypatch):
    """The sampling noise drawn into a fresh tensor, not the static buffer the step reads."""
    fill = fast_mod.fill_noise_
    monkeypatch.setattr(fast_mod, "fill_noise_", lambda noise, generator: fill(noise.clone(), generator))


def wrong_decoder(monkeypatch):
    """The fast VQVAE decoder skipping post_quant_conv."""
    def images(self, f_hat):
        return self.decoder(f_hat).float().clamp_(-1, 1).add_(1).mul_(0.5)
    monkeypatch.setattr(fast_mod.FastVAEDecoder, "images", images)


FLAT = dict(top_k=0, top_p=1.0, temperature=3.0)  # the tiny models' peaked draws would hide the noise
PLANTS = {  # bug -> (what the first failing line must name, sampling settings)
    "stale inputs": (stale_inputs, r"model 0 of the chain \(depth 2\) at scale 1: logits differ", {}),
    "stale condition": (stale_condition, r"model 0 of the chain \(depth 2\) at scale 0: logits differ", {}),
    "skipped prefill": (skipped_prefill, r"model 1 of the chain \(depth 1\) at scale 2 \(its prefill pass\): "
                                         r"logits differ", {}),
    "shared cache view": (shared_cache_view, r"model 0 of the chain \(depth 2\) at scale 1: logits differ", {}),
    "stale noise": (stale_noise, r"model 0 of the chain \(depth 2\) at scale 0: the draw agrees with the "
                                 r"reference sampler on", FLAT),
    "wrong decoder": (wrong_decoder, r"the VQVAE decoder: pixels differ", {}),
}


@pytest.mark.parametrize("graphs", [False, True], ids=["steps", "fake-graphs"])
@pytest.mark.parametrize("bug", list(PLANTS))
def test_a_planted_bug_stops_the_run_and_names_the_pass(decoder, monkeypatch, bug, graphs):
    plant, names, kw = PLANTS[bug]
    if graphs:
        fake_cuda_graphs(monkeypatch)
    plant(monkeypatch)
    path = FastPath(decoder)
    if graphs:
        path.steps = FastSteps(decoder.active(), cuda_graphs=True)
    with pytest.raises(FastPathMismatch, match=rf"failed on a batch of 3: {names}.*bound.*--eager"):
        run_batches(decoder, path, **kw)
    assert len(path.reports) == 1 and not path.reports[0].passed


# ---- in the scripts ---------------------------------------------------------------------------------
def test_sample_run_records_its_checks_and_stops_on_a_bug_before_writing(small_ckpts, tmp_path, monkeypatch):

    out = tmp_path / "run"
    sample(small_argv(small_ckpts, out, "--batch_size", "5"))  # 12 images: batches of 5, 5 and 2 (a new shape)
    run = json.loads((out / "run.json").read_text())
    checks = run["fast_check"]
    assert [c["batch"] for c in checks] == [5, 2] and all(c["passed"] for c in checks)
    assert [p["scale"] for p in checks[0]["passes"]] == [0, 1, 2, 3] and run["tf32"] is False
    assert all(p["logits"] == 0.0 and p["tokens"] == 1.0 for c in checks for p in c["passes"])

    bad = tmp_path / "bad"
    stale_inputs(monkeypatch)
    with pytest.raises(FastPathMismatch, match=r"model 0 of the chain \(depth 2\) at scale 1: logits differ"):
        sample(small_argv(small_ckpts, bad, "--batch_size", "5"))
    assert not list((bad / "shards").iterdir()) and not list((bad / "images").iterdir())  # nothing written
    recorded = json.loads((bad / "run.json").read_text())["fast_check"]
    assert len(recorded) == 1 and not recorded[0]["passed"]

    skipped = tmp_path / "skipped"
    sample(small_argv(small_ckpts, skipped, "--batch_size", "5", "--no_fast_check"))  # the bug is not looked for
    assert json.loads((skipped / "run.json").read_text())["fast_check"] == [{"skipped": "--no_fast_check"}]
    assert sample_CoDe.parse_args(["--eager"]).fast_check is True


def test_infer_reports_the_check(small_ckpts, tmp_path, capsys):
    flags = ["--drafter_ckpt", str(small_ckpts["drafter"]), "--refiner_ckpt", str(small_ckpts["refiner"]),
             "--vae_ckpt", str(small_ckpts["vae"]), "--draft_steps", "2", "--class_labels", "1,2",
             "--temperature", "1.0", "--output", str(tmp_path / "grid.png"), "--device", "cpu", "--fast"]
    infer_CoDe.main(infer_CoDe.parse_args(flags))
    assert "fast path checked against the eager path on 2 images: logits within 0 (bound 0.0001" in \
        capsys.readouterr().out
    infer_CoDe.main(infer_CoDe.parse_args(flags + ["--no_fast_check"]))
    assert "checked" not in capsys.readouterr().out


def test_gpu_acceptance_script_runs_tiny_on_the_cpu(capsys, monkeypatch):
    argv = ["--tiny", "--device", "cpu", "--batch_size", "2", "--repeats", "1", "--cases", "code-8"]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    assert "code-8: 2 checks passed; logits within 0 (bound 0.0001" in out
    assert "| code-8 |" in out and "| 0.633 |" in out and "| 0.22 |" in out
    stale_inputs(monkeypatch)
    assert gpu_check.main(argv) == 1
    assert "code-8: 1 checks FAILED" in capsys.readouterr().out


def test_tf32_is_set_as_the_published_scripts_set_it():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.deterministic = False
        assert published_numerics(torch.device("cpu"), True) is False  # the CPU is left alone
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.deterministic
        assert published_numerics(torch.device("cuda"), True) is True
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert published_numerics(torch.device("cuda"), False) is False
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = before[1], before[2]


def test_check_cost_benchmark_runs_and_counts_the_checks_of_a_run():
    out = fast_check_cost.main(["--batch_size", "2", "--repeats", "1", "--images", "1001"])
    # 501 batches of 2 (the last one a new shape): the first, the last, and re-checks after 200 and 400 batches
    assert out["checks"] == 4 and out["check_s"] > 0 and 0 < out["share"] < 1
