"""Export a training checkpoint as a small, shippable one (the app's default checkpoint).

    python -m train.export runs/lite_synthgres/best.pt assets/checkpoints/mabp-lite-synthgres.pt

By default: floating tensors stored as fp16 (restored to fp32 on load) and weights that are
bit-identical to the installed pretrained packages (frozen MiniLM embeddings and layers, frozen
EfficientNet-Lite0 stages) left out and re-read from the packages at build time, checked by sha256.
Optimizer/scheduler state is dropped; the model config and the training config are kept.
The checkpoint also carries the model's closed **vocabulary** (`mabp.vocabulary.ModelVocabulary`,
key "vocabulary"): the nouns, colours, taxonomy, spatial and count words of the SynthGRES world it was
trained on, derived from the training config's data.kwargs.world (shapes / photo / mixed); the app
uses it to say what the model knows. `--world` sets it for a checkpoint whose config does not say.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def vocabulary_entry(ckpt: dict, world: Optional[str] = None) -> dict:
    """{"vocabulary": ...} for a checkpoint written from `ckpt`, or {} when there is none to store.

    The vocabulary of SynthGRES world `world` when given, else of the world `ckpt["train_config"]` trained
    on, else the one `ckpt` already carries (a checkpoint of a real dataset has none: open vocabulary).
    Prints one line naming it. Raises ValueError for an unknown world (train.data.synthgres.world_vocabulary).
    """
    from mabp.vocabulary import CHECKPOINT_KEY
    from train.data.synthgres.world_vocabulary import vocabulary_for_config, world_vocabulary

    vocab = world_vocabulary(world) if world else vocabulary_for_config(ckpt.get("train_config"))
    if vocab is not None:
        print(f"vocabulary: worlds {list(vocab.worlds)}, {len(vocab.nouns)} nouns, {len(vocab.colours)} colours")
        return {CHECKPOINT_KEY: vocab.to_dict()}
    return {CHECKPOINT_KEY: ckpt[CHECKPOINT_KEY]} if CHECKPOINT_KEY in ckpt else {}


def size_limit_status(dst: Path, max_mb: Optional[float]) -> int:
    """The exit status for a written checkpoint and a `--max-mb` limit (None: no limit): 0 within it,
    1 (with one line on stderr naming the file and both sizes in MiB) above it."""
    size_mb = dst.stat().st_size / 2**20
    if max_mb is not None and size_mb > max_mb:
        print(f"error: {dst} is {size_mb:.1f} MB > --max-mb {max_mb}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a checkpoint of this project (e.g. runs/NAME/best.pt)")
    ap.add_argument("dst")
    ap.add_argument("--fp32", action="store_true", help="keep fp32 tensors (twice the size)")
    ap.add_argument("--keep-package-weights", action="store_true",
                    help="store every weight, also those identical to the installed packages")
    ap.add_argument("--max-mb", type=float, default=None, help="fail if the result is larger")
    ap.add_argument("--world", choices=("shapes", "photo", "mixed"), default=None,
                    help="store this SynthGRES world's vocabulary (default: from the training config)")
    args = ap.parse_args(argv)

    from mabp.registry import build_mabp, load_checkpoint, save_checkpoint

    try:
        ckpt = load_checkpoint(args.src)
        model = build_mabp(checkpoint=ckpt)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = {k: ckpt[k] for k in ("train_config", "step", "best", "converted_from") if k in ckpt}
    extra["exported_from"] = Path(args.src).name
    extra.update(vocabulary_entry(ckpt, args.world))
    try:
        dst = save_checkpoint(model, args.dst, extra=extra, half=not args.fp32,
                              skip_external=not args.keep_package_weights)
    except OSError as exc:  # CheckpointWriteError: disk full etc., one line, nothing half-written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = dst.stat().st_size / 2**20
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {dst}: {size_mb:.1f} MB ({n / 1e6:.1f} M parameters in the model; "
          f"{'fp32' if args.fp32 else 'fp16'} storage)")
    # the result must rebuild on its own
    again = build_mabp(checkpoint=dst)
    assert sum(p.numel() for p in again.parameters()) == n
    return size_limit_status(dst, args.max_mb)


if __name__ == "__main__":
    sys.exit(main())
