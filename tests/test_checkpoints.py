import pickle

import pytest
import torch

from conftest import ROOT
from tiny import TINY_VAE, TINY_VAR, fill_hf_cache, tiny_pair
from models import build_vae, build_var, load_vae, load_var
from models.build import vae_from_state_dict, var_from_state_dict
from models.meta import SkipRandomInit
from code import var_generate
from utils.checkpoint import CheckpointError, atomic_save

KEYS = ROOT / "tests" / "data" / "checkpoint-keys"
DERIVED = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias", "ema_vocab_hit_SV")


def official_keys(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


def meta_state_dict(keys: dict, drop_derived: bool = False) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=getattr(torch, dt), device="meta") for k, (shape, dt) in keys.items()
            if not (drop_derived and k.endswith(DERIVED))}


def layout(model: torch.nn.Module) -> dict:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [16, 20, 24, 30])
def test_real_size_var_has_exactly_the_official_keys(depth):
    assert layout(build_var(depth, "meta")) == official_keys(f"var_d{depth}")


def test_real_size_vae_has_exactly_the_official_keys():
    assert layout(build_vae("meta")) == official_keys("vae_ch160v4096z32")


def test_meta_shells_skip_only_the_random_initialisers():
    """Built on meta (on_meta()): the layout of a real build, every tensor on meta; inside, torch.nn.init's random
    initialisers leave a tensor as it is (outside they fill it), and everything else still runs."""
    vae, var = tiny_pair()
    shells = build_vae("meta", **TINY_VAE), build_var(2, "meta", vocab_size=64, cvae=8, patch_nums=(1, 2, 3, 4),
                                                      **TINY_VAR)
    for real, shell in zip((vae, var), shells):
        assert layout(shell) == layout(real) and all(t.is_meta for t in shell.state_dict().values())
    t = torch.zeros(4, 4)
    with SkipRandomInit():
        torch.nn.init.uniform_(t)
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(tensor=t, a=5 ** 0.5)  # as nn.Linear and nn.Conv2d call it
        assert not t.any()
        torch.nn.init.ones_(t)
        assert t.eq(1).all()
    assert torch.nn.init.normal_(t).ne(1).any()


def test_published_parameter_counts():
    counts = {16: 310_283_520, 20: 600_917_136, 24: 1_033_399_360, 30: 2_010_020_356}
    for depth, n in counts.items():
        assert sum(p.numel() for p in build_var(depth, "meta").parameters()) == n
    vae = build_vae("meta")
    assert sum(t.numel() for t in vae.state_dict().values()) == 108_989_315  # the spec counts the usage buffer


@pytest.mark.parametrize("drop_derived", [False, True])
@pytest.mark.parametrize("depth", [16, 30])
def test_official_state_dict_loads_strictly(depth, drop_derived):
    sd = meta_state_dict(official_keys(f"var_d{depth}"), drop_derived)
    model = var_from_state_dict(sd, f"var_d{depth}.pth", depth=depth, device="meta")
    assert model.config.depth == depth and model.config.width == 64 * depth and model.config.heads == depth
    assert model.config.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) or drop_derived


def test_official_vae_state_dict_loads_strictly():
    for drop in (False, True):
        vae = vae_from_state_dict(meta_state_dict(official_keys("vae_ch160v4096z32"), drop), "vae.pth", device="meta")
        assert vae.config.ch == 160 and vae.config.ch_mult == (1, 1, 2, 2, 4) and vae.config.vocab_size == 4096


def test_derived_buffers_are_rebuilt_when_absent(tmp_path):
    var = build_var(2, width=64, heads=2)  # published 10-scale schedule
    sd = {k: v for k, v in var.state_dict().items() if not k.endswith(DERIVED)}
    atomic_save(sd, tmp_path / "v.pth")
    m = load_var(tmp_path / "v.pth")
    assert torch.equal(m.lvl_1L, var.lvl_1L) and m.lvl_1L.shape == (1, 680)
    assert torch.equal(m.attn_bias_for_masking, var.attn_bias_for_masking)
    assert torch.equal(m.blocks[1].attn.zero_k_bias, torch.zeros(64))


def test_unknown_schedule_without_lvl_buffer_is_an_error(tmp_path):
    _, var = tiny_pair()
    atomic_save({k: v for k, v in var.state_dict().items() if k != "lvl_1L"}, tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="patch_nums cannot be inferred"):
        load_var(tmp_path / "v.pth")


def test_round_trip_gives_the_same_model(tmp_path):
    vae, var = tiny_pair()
    atomic_save(var.state_dict(), tmp_path / "var.pth")
    atomic_save(vae.state_dict(), tmp_path / "vae.pth")
    var2 = load_var(tmp_path / "var.pth", depth=2)
    vae2 = load_vae(tmp_path / "vae.pth", patch_nums=var2.config.patch_nums)
    assert var2.config == var.config and vae2.config == vae.config
    assert torch.equal(var_generate(var, vae, [1, 2], seed=0), var_generate(var2, vae2, [1, 2], seed=0))


def test_training_checkpoint_with_model_key_loads(tmp_path):
    _, var = tiny_pair()
    atomic_save({"model": var.state_dict(), "step": 3, "config": var.config.to_dict()}, tmp_path / "t.pth")
    assert load_var(tmp_path / "t.pth").config == var.config


@pytest.fixture
def tiny_file(tmp_path):
    _, var = tiny_pair()
    atomic_save(var.state_dict(), tmp_path / "var.pth")
    return tmp_path / "var.pth", var.state_dict()


def test_wrong_depth_names_the_file(tiny_file):
    path, _ = tiny_file
    with pytest.raises(CheckpointError, match=r"var\.pth holds a depth-2 VAR but depth 16 was requested"):
        load_var(path, depth=16)


def test_truncated_file(tiny_file, tmp_path):
    path, _ = tiny_file
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is not a readable PyTorch checkpoint"):
        load_var(bad)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_var(bad)


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickle_with_objects_is_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "x": Payload()}, bad)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_var(bad)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_raw_pickle_file_is_refused(tmp_path):
    bad = tmp_path / "raw.pkl"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="raw.pkl"):
        load_var(bad)


def test_vae_file_given_as_var(tmp_path):
    vae, _ = tiny_pair()
    atomic_save(vae.state_dict(), tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="not a VAR state dict"):
        load_var(tmp_path / "vae.pth")


@pytest.mark.parametrize("change,match", [("missing", "missing keys"), ("extra", "unexpected keys"),
                                          ("shape", "shape mismatches")])
def test_key_and_shape_errors(tiny_file, tmp_path, change, match):
    _, sd = tiny_file
    sd = dict(sd)
    if change == "missing":
        del sd["blocks.1.ffn.fc2.bias"]
    elif change == "extra":
        sd["blocks.1.ffn.extra"] = torch.zeros(1)
    else:
        sd["head.bias"] = torch.zeros(3)
    atomic_save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=match):
        load_var(tmp_path / "bad.pth")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does_not_exist.pth"):
        load_var("/nonexistent/does_not_exist.pth")


def test_atomic_save_leaves_no_temporary(tmp_path):
    atomic_save({"a": torch.ones(1)}, tmp_path / "x.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_published_names_come_from_the_hf_cache(offline_hf_cache, tmp_path):
    vae, var = tiny_pair()
    atomic_save(var.state_dict(), tmp_path / "v.pth")
    atomic_save(vae.state_dict(), tmp_path / "vae.pth")
    fill_hf_cache(offline_hf_cache, "FoundationVision/var", {"var_d16.pth": tmp_path / "v.pth",
                                                             "vae_ch160v4096z32.pth": tmp_path / "vae.pth"})
    fill_hf_cache(offline_hf_cache, "Zigeng/VAR_CoDe", {"refiner_8.pth": tmp_path / "v.pth"})
    m = load_var("var_d16.pth")
    v = load_vae(patch_nums=m.config.patch_nums)
    r = load_var("refiner_8.pth")
    assert torch.equal(var_generate(m, v, [1], seed=0), var_generate(var, vae, [1], seed=0))
    assert r.config == m.config
    with pytest.raises(FileNotFoundError, match="`hf download FoundationVision/var var_d30.pth"):
        load_var("var_d30.pth")
    with pytest.raises(FileNotFoundError, match="`hf download Zigeng/VAR_CoDe drafter_7.pth"):
        load_var("drafter_7.pth")


def test_ckpt_dir_is_searched(tmp_path):
    _, var = tiny_pair()
    atomic_save(var.state_dict(), tmp_path / "var_d16.pth")
    assert load_var("var_d16.pth", ckpt_dir=tmp_path).config == var.config
