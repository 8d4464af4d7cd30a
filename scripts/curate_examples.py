"""Fit the app's gallery (assets/examples/examples.json) to a checkpoint: keep only what it answers right.

    python scripts/curate_examples.py                       # the shipped checkpoint, photo seeds 1..60
    python scripts/curate_examples.py --checkpoint C --photo-scenes 3 --dry-run

Every bundled example must give the right answer with the shipped checkpoint (tests/test_app_examples.py
checks it). After a new checkpoint ships, this script:
  1. runs every SynthGRES gallery expression and drops those it answers wrong (target vs no target, and
     mask IoU >= the entry's min_iou against the scene's exact ground truth), printing each drop;
  2. adds "synthgres-photo" entries: photo-world scenes generated at app start from a seed (never
     committed as images), with the scene's own suggestions (target sets from the generator) that the
     checkpoint answers right — up to --photo-scenes scenes with at least --min-per-scene such expressions;
  3. leaves real photos as they are (their expected answers are target / no-target labels without masks:
     enable them by hand after looking at `python scripts/real_photo_figure.py`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "assets" / "examples" / "examples.json"


def answered_right(predictor, text: str, gt_mask, min_iou: float):
    """(right?, iou, result) for one expression whose exact ground truth is `gt_mask` (empty = no target)."""
    r = predictor.predict(text)
    if not gt_mask.any():
        return bool(r.no_target), None, r
    if r.no_target:
        return False, 0.0, r
    iou = float((gt_mask & r.mask).sum() / max(1, (gt_mask | r.mask).sum()))
    return iou >= min_iou, iou, r


def photo_objects(scene) -> list:
    """The scene's objects in the gallery's words (the app names an expected target by them)."""
    return [{"id": int(o.index), "size": o.size, "colour": o.colour or "", "shape": o.noun} for o in scene.objects]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--photo-scenes", type=int, default=3)
    ap.add_argument("--min-per-scene", type=int, default=3)
    ap.add_argument("--max-per-scene", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=60, help="photo-world seeds tried: 1..N")
    ap.add_argument("--min-iou", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    import torch

    from mabp import build_mabp
    from mabp.image_files import load_image
    from mabp.predictor import MABPPredictor
    from mabp.registry import SHIPPED_CHECKPOINT
    from train.data.synthgres import random_scene

    torch.set_num_threads(args.threads)
    predictor = MABPPredictor(build_mabp(checkpoint=args.checkpoint or SHIPPED_CHECKPOINT))
    data = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    kept_items = []
    for it in data["examples"]:
        if it.get("kind") == "synthgres-photo":
            continue  # regenerated below
        if it.get("kind") != "synthgres" or it.get("gallery", True) is False:
            kept_items.append(it)
            continue
        predictor.set_image(load_image(str(EXAMPLES.parent / it["file"])))
        scene = random_scene(it["seed"])[1]
        kept = []
        for e in it["expressions"]:
            gt = scene.union_mask(e.get("target_ids") or [])
            ok, iou, r = answered_right(predictor, e["text"], gt, e.get("min_iou", args.min_iou))
            if ok:
                kept.append(e)
            else:
                got = "no target" if r.no_target else ("a mask" if iou is None else f"IoU {iou:.2f}")
                print(f"drop {it['file']}: {e['text']!r} (expected {e['expected']}, got {got})")
        if kept:
            kept_items.append({**it, "expressions": kept})
        else:
            print(f"drop scene {it['file']}: no expression answered right")
    photos = []
    for seed in range(1, args.seeds + 1):
        if len(photos) >= args.photo_scenes:
            break
        image, scene, suggestions = random_scene(seed, 320, n=12, world="photo")
        predictor.set_image(image)
        good = []
        for text, ids, _tags in suggestions:
            ok, iou, _r = answered_right(predictor, text, scene.union_mask(ids), args.min_iou)
            if ok:
                entry = {"text": text, "expected": "target" if ids else "no target"}
                if ids:
                    entry.update(target_ids=sorted(int(i) for i in ids), min_iou=args.min_iou)
                good.append(entry)
        if len(good) >= args.min_per_scene and any(e["expected"] == "target" for e in good):
            photos.append({"kind": "synthgres-photo", "seed": seed, "title": f"SynthGRES photo scene #{seed}",
                           "expressions": good[:args.max_per_scene], "objects": photo_objects(scene)})
            print(f"photo seed {seed}: {len(good)} of {len(suggestions)} suggestions answered right")
    data["examples"] = kept_items + photos
    if args.dry_run:
        print(json.dumps(photos, indent=1)[:2000])
        return 0
    EXAMPLES.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {EXAMPLES}: {sum(len(i['expressions']) for i in data['examples'])} expressions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
