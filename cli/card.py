"""The model card (README.md) of a shared pair, written from its config.json alone."""
from __future__ import annotations

UNKNOWN = "unknown"


def model_card(config: dict, repo_id: str = "OWNER/REPO") -> str:
    d, r, n = config["drafter"], config["refiner"], config["draft_steps"]
    scales = len(d["config"]["patch_nums"])
    lines = ["---", "tags:", "- image-generation", "- class-conditional", "- var", "- collaborative-decoding", "---",
             f"# CoDe pair: VAR-d{d['depth']} drafter + VAR-d{r['depth']} refiner, N = {n}", "",
             f"Collaborative Decoding of a class-conditional VAR ({d['config']['num_classes']} classes, "
             f"{scales} scales {tuple(d['config']['patch_nums'])}): the drafter generates scales 1..{n}, the refiner "
             f"the other {scales - n}. Fine-tuned for N = {n} draft steps.", "",
             "## Use", "", "```bash", f"python infer_CoDe.py --pair hf://{repo_id}", "```", "",
             "```python", "from models import load_pair", "from code import CollaborativeDecoder", "",
             f'pair = load_pair("hf://{repo_id}")',
             "decoder = CollaborativeDecoder(pair.vae, [pair.drafter, pair.refiner], [pair.draft_steps])", "```", "",
             "## Files", "", "| file | what | SHA-256 |", "|---|---|---|",
             f"| {d['file']} | drafter, VAR-d{d['depth']} | `{d['sha256']}` |",
             f"| {r['file']} | refiner, VAR-d{r['depth']} | `{r['sha256']}` |"]
    vae = config["vae"]
    if vae.get("file"):
        lines.append(f"| {vae['file']} | the VQVAE | `{vae['sha256']}` |")
    else:
        lines += ["", f"The VQVAE is the published `{vae['name']}` from `{vae['repo']}`."]
    lines += ["", "## Made from", "", "| | file | SHA-256 |", "|---|---|---|"]
    for label, entry in (("drafter weights given", d["source"]), ("drafter fine-tuned from", d["base"]),
                         ("refiner weights given", r["source"]), ("refiner fine-tuned from", r["base"]),
                         ("refiner's teacher", r.get("teacher"))):
        lines.append(f"| {label} | {entry['name']} | `{entry['sha256']}` |" if entry else f"| {label} | {UNKNOWN} | |")
    lines += ["", "## Recipe", ""]
    for role, entry in (("drafter", d), ("refiner", r)):
        recipe = entry.get("recipe")
        lines.append(f"- **{role}**: " + (", ".join(f"{k} = {v}" for k, v in sorted(recipe.items())) if recipe else
                                          f"{UNKNOWN} (no training checkpoint was given when the pair was shared)"))
    lines += ["", "## Metrics", ""]
    metrics = config.get("metrics") or {}
    lines += [f"- {k}: {v}" for k, v in sorted(metrics.items())] or ["- evaluation: none recorded"]
    for role, entry in (("drafter", d), ("refiner", r)):
        if entry.get("last_log"):
            text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry["last_log"].items())
            lines.append(f"- {role}'s last training log line: {text}")
    return "\n".join(lines) + "\n"
