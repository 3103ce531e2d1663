"""safetensors checkpoints, hf:// names for any Hub repo, and shared pairs (share_pair.py, load_pair, --pair)."""
import json

import numpy as np
import pytest
import torch

import convert_checkpoint
import infer_CoDe
import sample_CoDe
import share_pair
from cli.args import UsageError
from tiny import fill_hf_cache
from models import load_pair, load_vae, load_var
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint, save_safetensors
from utils.files import sha256_file
from utils.hf_uri import HubRef, parse_hf_uri
from utils.images import read_png


def run(module, argv):
    return module.main(module.parse_args(argv))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


# ---- safetensors -------------------------------------------------------------------------------------------------

def test_convert_to_safetensors_and_back_is_bit_identical(small_ckpts, tmp_path, monkeypatch):
    st, back = tmp_path / "d2.safetensors", tmp_path / "d2_back.pth"
    run(convert_checkpoint, [str(small_ckpts["drafter"]), str(st)])
    run(convert_checkpoint, [str(st), str(back)])
    original = load_var(small_ckpts["drafter"])

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called on a safetensors file")
    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_pickle)
        assert same_weights(load_var(st), original)
    assert same_weights(load_var(back), original)
    assert torch.load(back, weights_only=True).keys() == torch.load(small_ckpts["drafter"], weights_only=True).keys()


def test_vae_loads_from_safetensors(small_ckpts, tmp_path):
    run(convert_checkpoint, [str(small_ckpts["vae"]), str(tmp_path / "vae.safetensors")])
    patch_nums = load_var(small_ckpts["drafter"]).config.patch_nums
    assert same_weights(load_vae(tmp_path / "vae.safetensors", patch_nums=patch_nums),
                        load_vae(small_ckpts["vae"], patch_nums=patch_nums))


def test_safetensors_keeps_the_strict_key_check(small_ckpts, tmp_path):
    sd = dict(torch.load(small_ckpts["drafter"], weights_only=True))
    sd.pop("blocks.1.attn.proj.weight")
    sd["extra.weight"] = torch.zeros(2)
    save_safetensors(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks.1.attn.proj.weight(.|\n)*unexpected keys \(1\): extra"):
        load_var(tmp_path / "bad.safetensors")


def test_truncated_safetensors_is_a_clear_error(small_ckpts, tmp_path):
    save_safetensors(torch.load(small_ckpts["drafter"], weights_only=True), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors is not a readable safetensors file"):
        load_var(tmp_path / "cut.safetensors")


def test_training_checkpoint_converts_with_its_config(small_ckpts, tmp_path):
    model = load_var(small_ckpts["drafter"])
    atomic_save({"model": model.state_dict(), "config": model.config.to_dict(), "step": 3}, tmp_path / "ckpt.pth")
    run(convert_checkpoint, [str(tmp_path / "ckpt.pth"), str(tmp_path / "w.safetensors")])
    sd, extras = read_checkpoint(tmp_path / "w.safetensors")
    assert extras == {"config": json.loads(json.dumps(model.config.to_dict()))}
    assert same_weights(load_var(tmp_path / "w.safetensors"), model)


def test_convert_refuses_to_overwrite_and_unknown_suffixes(small_ckpts, tmp_path):
    out = tmp_path / "d2.safetensors"
    run(convert_checkpoint, [str(small_ckpts["drafter"]), str(out)])
    with pytest.raises(UsageError, match="exists: choose another name or add --overwrite"):
        run(convert_checkpoint, [str(small_ckpts["refiner"]), str(out)])
    run(convert_checkpoint, [str(small_ckpts["refiner"]), str(out), "--overwrite"])
    assert same_weights(load_var(out), load_var(small_ckpts["refiner"]))
    with pytest.raises(UsageError, match="name it .safetensors or .pth"):
        run(convert_checkpoint, [str(small_ckpts["drafter"]), str(tmp_path / "d2.bin")])


# ---- hf:// -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ref", [
    ("hf://someone/var-code-n7/drafter_7.safetensors", HubRef("someone/var-code-n7", None, "drafter_7.safetensors")),
    ("hf://someone/var-code-n7@v1.0/sub/refiner.pth", HubRef("someone/var-code-n7", "v1.0", "sub/refiner.pth")),
])
def test_hf_names_parse(text, ref):
    assert parse_hf_uri(text) == ref and str(ref) == text


@pytest.mark.parametrize("text", ["hf://someone", "hf://someone/repo", "hf://someone/repo@/f.pth",
                                  "hf:///repo/f.pth", "hf://someone/repo/../f.pth", "hf://someone/repo//f.pth"])
def test_bad_hf_names_say_the_form(text):
    with pytest.raises(CheckpointError, match="write hf://owner/repo/path/in/repo"):
        parse_hf_uri(text)


def test_any_hub_repo_file_loads_from_the_cache(small_ckpts, offline_hf_cache, tmp_path):
    st = tmp_path / "drafter_7.safetensors"
    save_safetensors(torch.load(small_ckpts["drafter"], weights_only=True), st)
    fill_hf_cache(offline_hf_cache, "someone/var-code-n7", {"drafter_7.safetensors": st, "old.pth": small_ckpts["refiner"]})
    original = load_var(small_ckpts["drafter"])
    assert same_weights(load_var("hf://someone/var-code-n7/drafter_7.safetensors"), original)
    assert same_weights(load_var("hf://someone/var-code-n7@" + "0" * 40 + "/drafter_7.safetensors"), original)
    assert same_weights(load_var("hf://someone/var-code-n7/old.pth"), load_var(small_ckpts["refiner"]))
    with pytest.raises(FileNotFoundError, match="hf download someone/var-code-n7 absent.pth --revision v2"):
        load_var("hf://someone/var-code-n7@v2/absent.pth")


def test_a_revision_picks_that_snapshot(small_ckpts, offline_hf_cache):
    fill_hf_cache(offline_hf_cache, "someone/pair", {"m.pth": small_ckpts["drafter"]})
    repo = offline_hf_cache / "models--someone--pair"
    (repo / "snapshots" / ("1" * 40)).mkdir()
    (repo / "snapshots" / ("1" * 40) / "m.pth").write_bytes(small_ckpts["refiner"].read_bytes())
    (repo / "refs" / "v1").write_text("1" * 40)
    assert same_weights(load_var("hf://someone/pair/m.pth"), load_var(small_ckpts["drafter"]))
    assert same_weights(load_var("hf://someone/pair@v1/m.pth"), load_var(small_ckpts["refiner"]))


# ---- shared pairs ------------------------------------------------------------------------------------------------

def share(ckpts, out, *extra):
    run(share_pair, ["--drafter_ckpt", str(ckpts["drafter"]), "--refiner_ckpt", str(ckpts["refiner"]),
                     "--draft_steps", "2", "--vae_ckpt", str(ckpts["vae"]), "--out", str(out), *extra])
    return out


def test_shared_pair_loads_bit_identical_from_folder_and_hub(small_ckpts, offline_hf_cache, tmp_path):
    folder = share(small_ckpts, tmp_path / "pair", "--repo_id", "someone/var-code-n2")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "drafter.safetensors",
                                                         "refiner.safetensors", "vae.safetensors"]
    fill_hf_cache(offline_hf_cache, "someone/var-code-n2", {p.name: p for p in folder.iterdir()})
    drafter, refiner = load_var(small_ckpts["drafter"]), load_var(small_ckpts["refiner"])
    vae = load_vae(small_ckpts["vae"], patch_nums=drafter.config.patch_nums)
    for source in (folder, "hf://someone/var-code-n2"):
        pair = load_pair(source)
        assert pair.draft_steps == 2
        assert same_weights(pair.drafter, drafter) and same_weights(pair.refiner, refiner)
        assert same_weights(pair.vae, vae)


def test_shared_pair_card_and_config(small_ckpts, tmp_path):
    folder = share(small_ckpts, tmp_path / "pair", "--drafter_base", str(small_ckpts["refiner"]),
                   "--metric", "fid_50k=2.5")
    config = json.loads((folder / "config.json").read_text())
    assert config["drafter"]["sha256"] == sha256_file(folder / "drafter.safetensors")
    assert config["drafter"]["source"]["sha256"] == sha256_file(small_ckpts["drafter"])
    assert config["drafter"]["base"]["sha256"] == sha256_file(small_ckpts["refiner"])
    assert config["refiner"]["base"] is None and config["metrics"] == {"fid_50k": 2.5}
    card = (folder / "README.md").read_text()
    assert "N = 2" in card and sha256_file(small_ckpts["refiner"]) in card and "- fid_50k: 2.5" in card
    assert "| refiner fine-tuned from | unknown | |" in card
    assert "- **drafter**: unknown (no training checkpoint" in card


def test_recipe_and_last_log_come_from_the_training_checkpoint(small_ckpts, tmp_path):
    run_dir = tmp_path / "run"
    model = load_var(small_ckpts["drafter"])
    recipe = {"role": "drafter", "draft_steps": 2, "lr": 1e-06, "seed": 0}
    atomic_save({"model": model.state_dict(), "config": model.config.to_dict(), "recipe": recipe, "step": 4},
                run_dir / "ckpt_last.pth")
    (run_dir / "log.jsonl").write_text('{"step": 2, "loss": 9.0}\n{"step": 4, "loss": 3.25}\n')
    folder = share({**small_ckpts, "drafter": run_dir / "ckpt_last.pth"}, tmp_path / "pair")
    config = json.loads((folder / "config.json").read_text())
    assert config["drafter"]["recipe"] == recipe and config["drafter"]["last_log"] == {"step": 4, "loss": 3.25}
    assert "- **drafter**: draft_steps = 2, lr = 1e-06, role = drafter, seed = 0" in (folder / "README.md").read_text()
    assert same_weights(load_pair(folder).drafter, model)
    with pytest.raises(UsageError, match="trained for --draft_steps 2, not 3: pass --draft_steps 2"):
        run(share_pair, ["--drafter_ckpt", str(small_ckpts["drafter"]), "--refiner_ckpt", str(small_ckpts["refiner"]),
                         "--drafter_train", str(run_dir / "ckpt_last.pth"), "--draft_steps", "3",
                         "--out", str(tmp_path / "other")])


def test_share_refuses_a_used_folder(small_ckpts, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(UsageError, match="already exists and is not an empty folder"):
        share(small_ckpts, tmp_path / "used")


def test_infer_with_pair_gives_the_explicit_checkpoints_grid(small_ckpts, offline_hf_cache, tmp_path):
    folder = share(small_ckpts, tmp_path / "pair")
    fill_hf_cache(offline_hf_cache, "someone/var-code-n2", {p.name: p for p in folder.iterdir()})
    common = ["--class_labels", "1,2", "--seed", "3", "--device", "cpu"]
    run(infer_CoDe, ["--drafter_ckpt", str(small_ckpts["drafter"]), "--refiner_ckpt", str(small_ckpts["refiner"]),
                     "--vae_ckpt", str(small_ckpts["vae"]), "--draft_steps", "2", "--output",
                     str(tmp_path / "a.png"), *common])
    run(infer_CoDe, ["--pair", str(folder), "--output", str(tmp_path / "b.png"), *common])
    run(infer_CoDe, ["--pair", "hf://someone/var-code-n2", "--output", str(tmp_path / "c.png"), *common])
    assert np.array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png"))
    assert np.array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "c.png"))
    with pytest.raises(UsageError, match="--pair gives the drafter and the refiner: drop --drafter_ckpt"):
        run(infer_CoDe, ["--pair", str(folder), "--drafter_ckpt", str(small_ckpts["drafter"]), "--output",
                         str(tmp_path / "d.png"), *common])


def test_sample_with_pair_writes_the_explicit_checkpoints_images(small_ckpts, tmp_path):
    folder = share(small_ckpts, tmp_path / "pair")
    common = ["--classes", "1,3", "--per_class", "2", "--device", "cpu", "--decode_chunk", "1", "--workers", "1"]
    explicit = sample_CoDe.main(sample_CoDe.parse_args(
        ["--drafter_ckpt", str(small_ckpts["drafter"]), "--refiner_ckpt", str(small_ckpts["refiner"]), "--vae_ckpt",
         str(small_ckpts["vae"]), "--draft_steps", "2", "--output_path", str(tmp_path / "a"), *common]))
    shared = sample_CoDe.main(sample_CoDe.parse_args(["--pair", str(folder), "--output_path", str(tmp_path / "b"),
                                                      *common]))
    assert explicit.read_bytes() == shared.read_bytes()
