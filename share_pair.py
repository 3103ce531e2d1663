"""Write a fine-tuned drafter / refiner pair into a folder ready for `hf upload`: the weights as safetensors, a
config.json (draft steps N, each model's layout and SHA-256) and a model card (README.md) with the recipe, the
checkpoints it was made from and the metrics recorded.

    python share_pair.py --drafter_ckpt output/drafter8/ckpt_last.pth --refiner_ckpt output/refiner8/ckpt_last.pth \\
        --draft_steps 8 --drafter_base var_d30.pth --refiner_base var_d16.pth --teacher var_d30.pth \\
        --metric fid_50k=2.3 --repo_id someone/var-code-n8 --out shared/var-code-n8
    hf upload someone/var-code-n8 shared/var-code-n8 .            # the Hub's own CLI (hf auth login first)
    python infer_CoDe.py --pair hf://someone/var-code-n8           # anyone, from then on

The weights may be exported files (drafter_8.pth), training checkpoints (ckpt_last.pth: the recipe is read from
them, and the last line of the log.jsonl beside them), published names or hf:// names. Without a training
checkpoint (here or as --drafter_train / --refiner_train) the card says the recipe is unknown.
"""
from __future__ import annotations

import argparse

from cli.args import UsageError, exit_on_error
from cli.share import ShareSpec, share_pair


def metric(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not name or number is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=NUMBER (e.g. fid_50k=2.3)")
    return name, number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter_ckpt", required=True, help="the fine-tuned drafter (weights or training checkpoint)")
    parser.add_argument("--refiner_ckpt", required=True, help="the fine-tuned refiner (weights or training checkpoint)")
    parser.add_argument("--draft_steps", type=int, required=True, help="N the pair was fine-tuned for")
    parser.add_argument("--out", required=True, help="a new (or empty) folder to write")
    parser.add_argument("--vae_ckpt", default=None,
                        help="ship this VQVAE in the folder (default: name the published one, not shipped)")
    parser.add_argument("--drafter_base", default=None, help="the checkpoint the drafter was fine-tuned from")
    parser.add_argument("--refiner_base", default=None, help="the checkpoint the refiner was fine-tuned from")
    parser.add_argument("--teacher", default=None, help="the refiner's distillation teacher")
    parser.add_argument("--drafter_train", default=None, help="the drafter's training checkpoint, for its recipe")
    parser.add_argument("--refiner_train", default=None, help="the refiner's training checkpoint, for its recipe")
    parser.add_argument("--metric", type=metric, action="append", default=[], metavar="NAME=VALUE",
                        help="a measured result for the card (repeatable), e.g. fid_50k=2.3")
    parser.add_argument("--repo_id", default="OWNER/REPO", help="the Hub repo it will be uploaded to (for the card)")
    parser.add_argument("--ckpt_dir", default=None, help="a folder holding published files, for offline use")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    names = [name for name, _ in args.metric]
    if len(set(names)) != len(names):
        raise UsageError(f"--metric names repeat: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    spec = ShareSpec(args.drafter_ckpt, args.refiner_ckpt, args.draft_steps, args.vae_ckpt, args.drafter_base,
                     args.refiner_base, args.teacher, args.drafter_train, args.refiner_train, dict(args.metric),
                     args.ckpt_dir, args.repo_id)
    out = share_pair(spec, args.out)
    print(f"wrote {out}; upload with: hf upload {args.repo_id} {out} .")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
