"""The fast path (code/fast.py) against the eager path, its cache arena, the FLOP counter and the benchmark.

CUDA graphs cannot run here (no GPU): the tests run the same StaticStep code uncaptured, and the compiled
steps through torch.compile with the aot_eager backend (Dynamo tracing, guards and per-scale specialisation,
without code generation). Inductor on the CPU generates and compiles C++ for every scale, far slower than the rest
of the suite, so that test runs only with CODE_TEST_INDUCTOR=1.
"""
import contextlib
import copy
import gc
import os
import weakref

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import code.fast as fast_mod
from benchmarks import benchmark
from code import CollaborativeDecoder, FastPath, FastPathError, TokenEdit, var_generate
from code.fast import FastSteps, FastVAEDecoder, dynamo_limits
from code.sampling import draw_from_noise, fill_noise_, sample_tokens
from tiny import tiny_pair, tiny_var_like
from models import cast_linear_weights_
from models.scales import token_offsets
from models.var import VARConfig

CODE_KW = dict(top_k=[20, 20, 10, 10], top_p=0.9, temperature=[1.1, 1.1, 1.0, 1.0], cfg=2.0)
TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def assert_same_state(a, b, logits=True):
    assert len(a.tokens) == len(b.tokens)
    for x, y in zip(a.tokens, b.tokens):
        assert torch.equal(x, y)
    assert torch.equal(a.f_hat, b.f_hat)
    if logits:
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))


@pytest.fixture
def chain():
    vae, drafter = tiny_pair(depth=2)
    return vae, drafter, tiny_var_like(vae, depth=1, seed=5)


# ---- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k,top_p,temperature", [(4, 0.9, 1.3), (0, 1.0, 1.0), (16, 0.5, 0.7)])
def test_noise_draw_is_the_published_multinomial(top_k, top_p, temperature):
    logits = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(top_k))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ref = sample_tokens(torch.cat([logits[:3] * 2.5 - logits[3:] * 1.5]), top_k, top_p, temperature, generator=g1)
    noise = fill_noise_(torch.empty(3, 5, 16), g2)
    assert torch.equal(draw_from_noise(logits, 1.5, top_k, top_p, temperature, False, noise), ref)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same amount of the stream consumed


def test_noise_draw_with_one_generator_per_image():
    logits = torch.randn(4, 3, 16)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    ref = sample_tokens(logits[:2] * 2 - logits[2:], 8, 0.9, 1.0, generator=gens())
    noise = fill_noise_(torch.empty(2, 3, 16), gens())
    assert torch.equal(draw_from_noise(logits, 1.0, 8, 0.9, 1.0, False, noise), ref)
    with pytest.raises(ValueError, match="generators"):
        fill_noise_(torch.empty(3, 3, 16), gens())


# ---- fast == eager ----------------------------------------------------------------------------------
CHAINS = {"var": lambda v, d, r: ([d], []), "code": lambda v, d, r: ([d, r], [2]),
          "refiner-only": lambda v, d, r: ([d, r], [0]), "three": lambda v, d, r: ([r, d, r], [1, 3])}


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("name", list(CHAINS))
def test_fast_path_gives_the_eager_tokens(chain, name, greedy):
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, *CHAINS[name](vae, drafter, refiner))
    path = FastPath(decoder)
    for labels, seed in (([1, 2, 3], 0), ([7, 0, 9], 5)):  # a second call replays the steps with new inputs
        eager = decoder.state(labels, seed=seed, greedy=greedy, keep_logits=True, **CODE_KW)
        fast = decoder.state(labels, seed=seed, greedy=greedy, keep_logits=True, fast=path, **CODE_KW)
        assert_same_state(eager, fast)
        lean = decoder.state(labels, seed=seed, greedy=greedy, fast=path, **CODE_KW)
        assert_same_state(eager, lean, logits=False)
    assert len(path.steps._steps) == 4  # one pass per scale, with or without kept logits; the second call reuses them


def test_one_path_serves_new_sampling_settings(chain):
    """A path reused with other cfg / top-k / top-p / temperature / greedy settings must not replay a stale step."""
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    path = FastPath(decoder)
    settings = [CODE_KW, {**CODE_KW, "cfg": 0.5}, {**CODE_KW, "top_k": 3}, {**CODE_KW, "top_p": 0.5},
                {**CODE_KW, "temperature": 3.0}, {**CODE_KW, "greedy": True}, CODE_KW]
    seen = []
    for kw in settings:
        eager = decoder.state([1, 2, 3], seed=4, **kw)
        assert_same_state(eager, decoder.state([1, 2, 3], seed=4, fast=path, **kw), False)
        seen.append(eager.tokens)
    assert all(any(not torch.equal(a, b) for a, b in zip(seen[0], s)) for s in seen[1:-1])  # each setting matters


def test_a_path_belongs_to_its_caller_and_fast_true_keeps_nothing(chain, monkeypatch):
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    built, init = [], FastPath.__init__
    monkeypatch.setattr(FastPath, "__init__", lambda self, *a, **kw: (built.append(weakref.ref(self)),
                                                                      init(self, *a, **kw))[1])
    images, tokens = decoder([1, 2], seed=3, return_tokens=True, fast=True)  # built for this call, then dropped
    ref_images, ref_tokens = decoder([1, 2], seed=3, return_tokens=True)
    assert torch.equal(images, ref_images) and all(torch.equal(a, b) for a, b in zip(tokens, ref_tokens))
    gc.collect()
    assert len(built) == 1 and built[0]() is None  # one path for the call (tokens and decoder), kept by nobody
    assert not [name for name, value in vars(fast_mod).items() if isinstance(value, (list, dict, FastPath))
                and not name.startswith("__") and value]  # no module state
    path = FastPath(decoder)
    # another decoder object over the same models and boundaries may use it (collaborative_generate builds one)
    assert torch.equal(CollaborativeDecoder(vae, [drafter, refiner], 2)([1, 2], seed=3, fast=path), ref_images)
    assert torch.equal(var_generate(drafter, vae, [4], seed=1, fast=True), var_generate(drafter, vae, [4], seed=1))
    with pytest.raises(ValueError, match="another decoder"):
        CollaborativeDecoder(vae, [drafter], [])([1], fast=path)
    with pytest.raises(ValueError, match="fast must be"):
        CollaborativeDecoder(vae, [drafter], [])([1], fast="yes")
    arena = weakref.ref(path.steps.arena)
    del path
    gc.collect()
    assert arena() is None  # dropping the path frees its KV arena (and on CUDA its graphs and pool)


def test_fast_path_with_per_image_generators_and_an_edit(chain):
    vae, drafter, refiner = chain
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    src = CollaborativeDecoder(vae, [drafter]).state([3, 4], seed=9).tokens
    edit = TokenEdit(src, [torch.rand(t.shape, generator=torch.Generator().manual_seed(0)) < 0.5 for t in src])
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    eager = decoder.state([5, 6], generator=gens(), edit=edit)
    fast = decoder.state([5, 6], generator=gens(), edit=edit, fast=FastPath(decoder))
    assert_same_state(eager, fast, logits=False)


def test_new_batch_size_reallocates_and_stays_exact(chain):
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    path = FastPath(decoder)
    for labels in ([1, 2, 3], [4], [1, 2, 3]):
        ref = decoder.state(labels, seed=2)
        assert_same_state(ref, decoder.state(labels, seed=2, fast=path), False)
        assert path.steps._for[0] == 2 * len(labels) and path.steps.arena.shape[0] == max(
            2 * m.config.depth * 2 * len(labels) * n * m.config.width for m, n in ((drafter, 1), (refiner, 14)))


def parameters(*models):
    return [(name, p.data_ptr(), p.dtype) for m in models for name, p in m.named_parameters()]


def test_bf16_weights_give_the_autocast_products_on_both_paths_in_either_order(chain):
    """Linear weights cast once to bf16 compute exactly what fp32 weights under bf16 autocast do; the eager and
    the fast path both run on such models, in either order, and neither changes them."""
    vae, drafter, refiner = chain
    d16, r16 = (cast_linear_weights_(copy.deepcopy(m), torch.bfloat16) for m in (drafter, refiner))
    assert d16.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16 and d16.head.bias.dtype == torch.bfloat16
    assert d16.pos_1LC.dtype == d16.class_emb.weight.dtype == d16.blocks[0].attn.q_bias.dtype == torch.float32
    with torch.autocast("cpu", torch.bfloat16):
        ref = CollaborativeDecoder(vae, [drafter, refiner], [2]).state([1, 2], seed=4, keep_logits=True, **CODE_KW)
    decoder = CollaborativeDecoder(vae, [d16, r16], [2])
    before = parameters(d16, r16, vae)
    for order in (("eager", "fast", "eager"), ("fast", "eager", "fast")):
        path = FastPath(decoder)
        for kind in order:  # each path enters bf16 autocast itself
            state = decoder.state([1, 2], seed=4, keep_logits=True, fast=path if kind == "fast" else False, **CODE_KW)
            assert_same_state(ref, state)
            assert state.logits[-1].dtype == torch.float32
    assert parameters(d16, r16, vae) == before  # nothing was cast or replaced
    with torch.autocast("cpu", torch.bfloat16):  # a caller's matching autocast changes nothing
        assert_same_state(ref, decoder.state([1, 2], seed=4, keep_logits=True, fast=FastPath(decoder), **CODE_KW))
    with torch.autocast("cpu", torch.float16), pytest.raises(ValueError, match="autocast asks for torch.float16"):
        decoder.state([1, 2])


def test_the_fast_path_leaves_float32_models_alone(chain):
    """Issue 10's reproduction: building a FastPath used to cast the caller's models to bf16 in place."""
    vae, drafter, _ = chain
    before = parameters(drafter, vae)
    path = FastPath(CollaborativeDecoder(vae, [drafter]))
    var_generate(drafter, vae, [1, 2], seed=0, fast=path)
    assert parameters(drafter, vae) == before
    assert torch.equal(var_generate(drafter, vae, [1, 2], seed=0), var_generate(drafter, vae, [1, 2], seed=0, fast=path))


def test_only_compiled_passes_touch_dynamo(chain, monkeypatch):
    """Dynamo's limits are raised around compiled passes only: an uncompiled path (the default on a CPU) neither
    patches Dynamo's settings nor pays its import (~1.5 s)."""
    calls = []
    monkeypatch.setattr(fast_mod, "dynamo_limits", lambda *a: calls.append(a) or contextlib.nullcontext())
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    decoder([1], seed=0, fast=FastPath(decoder))  # its run-time check decodes with the fast VQVAE decoder too
    assert calls == []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # "compiled": the same code, eagerly
    decoder([1], seed=0, fast=FastPath(decoder, compile=True))
    assert len(calls) >= 2  # the steps and the VQVAE decoder


def test_dynamo_limits_work_with_both_names(monkeypatch):
    """torch >= 2.7 calls them recompile_limit / accumulated_recompile_limit, older releases cache_size_limit /
    accumulated_cache_size_limit: dynamo_limits sets whichever this torch has, and only inside the block."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    with dynamo_limits(123):
        assert getattr(config, name) == 123
    assert getattr(config, name) == before

    class OldConfig:  # the torch 2.4 - 2.6 names only
        cache_size_limit, accumulated_cache_size_limit = 8, 256

        def patch(self, **changes):
            self.patched = changes
            return contextlib.nullcontext()

    old = OldConfig()
    monkeypatch.setattr(torch._dynamo, "config", old)
    dynamo_limits(99)
    assert old.patched == {"cache_size_limit": 99, "accumulated_cache_size_limit": 8 * 99}


def test_a_step_that_fails_to_compile_names_the_pass_and_the_eager_path(chain, monkeypatch):
    vae, drafter, refiner = chain
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])

    def broken(fn, **options):
        def run(*args, **kwargs):
            raise RuntimeError("Dynamo failed to trace\nlong traceback")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(FastPathError, match=r"the pass of the depth-2 VAR at scale 0: RuntimeError: Dynamo failed "
                                            r"to trace\. Use the eager path instead \(--eager"):
        decoder([1], fast=FastPath(decoder, compile=True))
    with pytest.raises(FastPathError, match="the VQVAE decoder for 1 images"):
        FastPath(decoder, compile=True).decode(torch.zeros(1, vae.Cvae, 4, 4))


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: replay() reruns the captured step and writes its results
    into the tensors the capture returned, as a real replay writes into the graph's static outputs."""
    capturing, log = None, []

    def replay(self):
        FakeGraph.log.append("replay")
        for static, fresh in zip(self.step.out, self.step.fn(self.step.cond, self.step.inputs, self.step.noise)):
            if static is not None:
                static.copy_(fresh)


def fake_cuda_graphs(monkeypatch):
    class Stream:
        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def graph(g, pool=None):
        assert pool == "pool"
        FakeGraph.capturing = g
        yield
        FakeGraph.capturing = None

    run = fast_mod.StaticStep._run

    def logged_run(self):
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.step = self
        FakeGraph.log.append("capture" if FakeGraph.capturing is not None else "run")
        return run(self)

    for name, value in (("Stream", Stream), ("stream", lambda s: contextlib.nullcontext()),
                        ("current_stream", lambda: Stream()), ("graph", graph), ("CUDAGraph", FakeGraph),
                        ("graph_pool_handle", lambda: "pool")):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(fast_mod.StaticStep, "_run", logged_run)
    FakeGraph.log = []


def test_graph_replays_give_the_eager_tokens(chain, monkeypatch):
    """The CUDA-graph code path with a fake graph API: warm-up, capture, then replays into static outputs."""
    vae, drafter, refiner = chain
    fake_cuda_graphs(monkeypatch)
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    path = FastPath(decoder)
    path.steps = FastSteps(decoder.active(), cuda_graphs=True)
    first = decoder.state([1, 2, 3], seed=0, fast=path, **CODE_KW)
    # per pass: 2 warm-ups, capture, replay; then the run-time check replays every pass on other inputs
    assert FakeGraph.log == ["run", "run", "capture", "replay"] * 4 + ["replay"] * 4
    assert len(path.reports) == 1 and path.reports[0].passed
    kept = [t.clone() for t in first.tokens]
    second = decoder.state([7, 8, 9], seed=1, fast=path, **CODE_KW)
    assert FakeGraph.log[20:] == ["replay"] * 4  # nothing recompiled, recaptured or checked again
    assert all(torch.equal(a, b) for a, b in zip(first.tokens, kept))  # outputs were copied out of the graph
    for state, labels, seed in ((first, [1, 2, 3], 0), (second, [7, 8, 9], 1)):
        assert_same_state(decoder.state(labels, seed=seed, **CODE_KW), state, logits=False)


# ---- compiled steps -----------------------------------------------------------------------------------
def compiled_matches_eager(decoder, backend):
    torch._dynamo.reset()  # imports Dynamo on first use (~1.5 s), in the test process that compiles, not at collection
    counters = torch._dynamo.utils.counters
    counters.clear()
    path = FastPath(decoder, compile=True, compile_options=dict(backend=backend))
    for seed in (0, 1):
        ref = decoder.state([1, 2, 3], seed=seed, keep_logits=True, **CODE_KW)
        got = decoder.state([1, 2, 3], seed=seed, keep_logits=True, fast=path, **CODE_KW)
        assert_same_state(ref, got, logits=backend == "aot_eager")  # aot_eager runs the eager kernels
        for a, b in zip(ref.logits, got.logits):  # Inductor's fused fp32 kernels round differently
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return counters["stats"]["unique_graphs"]


def test_compiled_steps_match_eager_and_share_one_block(chain):
    vae, _, refiner = chain
    deeper = tiny_var_like(vae, depth=4, seed=3)
    # four passes (drafter scales 0, 1; refiner prefill 0..2, then 3), each (blocks, head, sampler) specialised
    # once: the drafter's 4 blocks share one compiled block per pass, so the count is that of a 1-block drafter
    graphs = compiled_matches_eager(CollaborativeDecoder(vae, [deeper, refiner], [2]), "aot_eager")
    if TORCH >= (2, 13):  # torch 2.4's Dynamo compiles some blocks apart (18 graphs): the same tokens, more compiling
        assert graphs == 4 * 3 + 1  # + the VQVAE decoder, which the run-time check decodes a chunk with


@pytest.mark.skipif(os.environ.get("CODE_TEST_INDUCTOR") != "1",
                    reason="Inductor's C++ code generation takes ~90 s on 2 CPU cores; set CODE_TEST_INDUCTOR=1")
def test_inductor_compiled_steps_match_eager(chain):
    vae, drafter, refiner = chain
    assert compiled_matches_eager(CollaborativeDecoder(vae, [drafter, refiner], [2]), "inductor") == 12


# ---- the cache arena ----------------------------------------------------------------------------------
def test_arena_holds_exactly_the_needed_scales_and_is_shared(chain):
    vae, drafter, refiner = chain
    offs, B = token_offsets(vae.patch_nums), 3
    decoder = CollaborativeDecoder(vae, [drafter, refiner], [2])
    path = FastPath(decoder, check=False)  # the check's passes would join the spied ones
    seen, passes = [], []
    setup, step = FastSteps.setup_cache, FastSteps.__call__

    def spy_setup(self, model, batch, length, dtype, device):
        other = refiner if model is drafter else drafter
        seen.append((model, length, other.cache_length))
        setup(self, model, batch, length, dtype, device)
        seen.append((model.blocks[0].attn.kv_cache.k.data_ptr(), self.arena.data_ptr()))

    def spy_step(self, model, cond_BD, inputs, k, bg, *args):
        passes.append((model, k, bg, model.cache_length))
        return step(self, model, cond_BD, inputs, k, bg, *args)

    FastSteps.setup_cache, FastSteps.__call__ = spy_setup, spy_step
    try:
        decoder.state([1, 2, 3], seed=0, fast=path)
    finally:
        FastSteps.setup_cache, FastSteps.__call__ = setup, step
    # drafter: scales 0, 1, caches scale 0 only; refiner: prefill of 0..2 then 3, caches 0..2; never the last scale
    assert seen[0] == (drafter, offs[1], None) and seen[2] == (refiner, offs[3], None)  # the other's cache is freed
    assert seen[1][0] == seen[1][1] == seen[3][0] == seen[3][1]  # both caches start at the arena's first byte
    assert passes == [(drafter, 0, 0, offs[1]), (drafter, 1, offs[1], offs[1]),
                      (refiner, 2, 0, offs[3]), (refiner, 3, offs[3], offs[3])]
    assert all(offs[k + 1] > n for m, k, bg, n in passes if k in (1, 3))  # the last scale is joined, not stored
    need = [2 * m.config.depth * 2 * B * n * m.config.width for m, n in ((drafter, offs[1]), (refiner, offs[3]))]
    assert path.steps.arena.numel() == max(need) < sum(need)  # the largest, not the sum
    assert drafter.cache_length is None and refiner.cache_length is None


# ---- the decoder ----------------------------------------------------------------------------------------
def test_fast_decoder_matches_the_vqvae(chain):
    vae = chain[0]
    f_hat = torch.randn(5, vae.Cvae, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = vae.fhat_to_img(f_hat).float().add_(1).mul_(0.5)
    chunked = FastVAEDecoder(vae, chunk=2)(f_hat)  # chunks of 2, 2, 1 (CPU convolutions differ in the last bits)
    assert chunked.shape == ref.shape and not chunked.requires_grad
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-6)
    last = FastVAEDecoder(vae, channels_last=True, chunk=3)(f_hat)
    assert last.is_contiguous() and last.shape == ref.shape
    torch.testing.assert_close(last, ref, rtol=1e-5, atol=1e-5)
    half = FastVAEDecoder(vae, dtype=torch.bfloat16, channels_last=True)(f_hat)
    assert half.dtype == torch.float32 and (half - ref).abs().max() < 0.05
    assert len(half.unique()) > 2 * len(half.to(torch.bfloat16).unique())  # mapped to [0, 1] in fp32, not bf16
    assert next(vae.decoder.parameters()).dtype == torch.float32  # the VQVAE itself is untouched


def test_cast_linear_weights_only_touches_linears(chain):
    vae, drafter, _ = chain
    m = cast_linear_weights_(copy.deepcopy(drafter))
    for name, p in m.named_parameters():
        linear = isinstance(m.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Linear) if "." in name else False
        assert p.dtype == (torch.bfloat16 if linear else torch.float32), name


# ---- FLOPs ----------------------------------------------------------------------------------------------
def test_flop_count_by_hand():
    c = VARConfig(depth=1, width=64, heads=2, num_classes=10, vocab_size=64, cvae=8, patch_nums=(1, 2))
    C, H4, V, rows = 64, 256, 64, 2  # width, MLP hidden, vocabulary, CFG-doubled batch of 1 image
    per_token = 2 * C * (3 * C + C + 2 * H4)  # qkv, proj, fc1, fc2
    adaln = rows * 2 * C * 6 * C + rows * 2 * C * 2 * C  # block AdaLN + head AdaLN, once per pass
    attention = lambda pairs: rows * pairs * 2 * 2 * C  # noqa: E731  QK^T and AV over all heads
    scale0 = rows * 1 * per_token + adaln + attention(1 * 1) + rows * 1 * 2 * C * V
    scale1 = 1 * 4 * 2 * 8 * C + rows * 4 * per_token + adaln + attention(4 * 5) + rows * 4 * 2 * C * V
    assert benchmark.pass_flops(c, 0, 0, 1) == scale0 == 344576
    assert benchmark.pass_flops(c, 1, 1, 1) == scale1 == 997376
    assert benchmark.chain_flops([c], [2], 1) == scale0 + scale1
    # a prefill of both scales: 1x1 + 4x5 block-causal pairs, word_embed on the 4 tokens with inputs
    prefill = 4 * 2 * 8 * C + rows * 5 * per_token + adaln + attention(1 + 20) + rows * 4 * 2 * C * V
    assert benchmark.pass_flops(c, 1, 0, 1) == prefill
    assert benchmark.chain_flops([c, c], [1, 2], 1) == scale0 + prefill


def test_flop_count_matches_torch_flop_counter(chain):
    """torch's FlopCounterMode on the eager run (math attention, so that it sees the products)."""
    vae, drafter, refiner = chain
    offs = token_offsets(vae.patch_nums)
    for models, stops, masked in (([drafter], [4], 0), ([drafter, refiner], [2, 4], offs[3] ** 2 - 147)):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            CollaborativeDecoder(vae, models, stops[:-1]).state([1, 2, 3], seed=0)
        counted = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" not in str(op))
        # the counter sees the refiner's dense prefill (14 x 14 pairs); ours counts the 147 the mask allows
        dense_extra = refiner.config.depth * 6 * masked * 4 * refiner.config.width if masked else 0
        assert benchmark.chain_flops([m.config for m in models], stops, 3) == counted - dense_extra


def test_published_floors():
    """The spec: ~0.30 s for VAR-d30 and ~0.16 s for CoDe N=8 at batch 64 and 790 TFLOP/s."""
    d30, d16 = VARConfig(depth=30), VARConfig(depth=16)
    assert abs(benchmark.chain_flops([d30], [10], 64) / 790e12 - 0.30) < 0.01
    assert abs(benchmark.chain_flops([d30, d16], [8, 10], 64) / 790e12 - 0.16) < 0.01


# ---- the benchmark script -----------------------------------------------------------------------------
def test_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.md"
    report = benchmark.main(["--tiny", "--device", "cpu", "--cases", "code-8", "--batch_size", "2",
                             "--warmup", "1", "--repeats", "1", "--check", "--out", str(out)])
    assert out.read_text() == report
    rows = [line for line in report.splitlines() if " | eager | " in line or " | fast | " in line]
    assert [r.split(" | ")[:2] for r in rows] == [["| code-8", "eager"], ["| code-8", "fast"]]
    assert "x matmul floor" in report and "speed-up vs eager" in report
    assert "| code-8 | 0.00e+00 | 0.00e+00 | 1.0000 |" in report  # fp32 on the CPU: identical logits and tokens
    fast_row = rows[1].split(" | ")
    assert fast_row[10].endswith("x") and float(fast_row[12]) > 0  # a ratio against eager, a positive floor
    # --no-eager (the fast path alone): tests/test_first_use.py's documented --tiny command


def test_benchmark_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(["--help"])
    assert e.value.code == 0 and "--no-eager" in capsys.readouterr().out
    for bad in (["--device", "cpu"], ["--tiny", "--device", "cpu", "--cases", "var-d99"],
                ["--tiny", "--device", "cpu", "--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            benchmark.parse_args(bad)
        assert e.value.code == 2


def test_models_of_a_chain_must_share_their_reduced_dtype(chain):
    vae, drafter, refiner = chain
    d16 = cast_linear_weights_(copy.deepcopy(drafter), torch.bfloat16)
    r16 = cast_linear_weights_(copy.deepcopy(refiner), torch.float16)
    with pytest.raises(ValueError, match="linear weights mix torch.bfloat16, torch.float16"):
        CollaborativeDecoder(vae, [d16, r16], [2])([1])
    mixed = CollaborativeDecoder(vae, [d16, refiner], [2])  # fp32 next to bf16: the bf16 autocast serves both
    with torch.autocast("cpu", torch.bfloat16):
        ref = CollaborativeDecoder(vae, [drafter, refiner], [2]).state([1, 2], seed=0)
    assert_same_state(ref, mixed.state([1, 2], seed=0), logits=False)
