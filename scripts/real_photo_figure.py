"""Run a checkpoint on the bundled real photographs and draw what it answers, failures included.

    python scripts/real_photo_figure.py                                  # shipped checkpoint -> docs/real-photos.png
    python scripts/real_photo_figure.py --checkpoint C --out fig.png --json answers.json

Each photo gets expressions with nouns the photo world taught ("the cat", "the cup", "the spoon") and
nouns it never saw ("the woman", "the flag"); every tile shows the model's answer (mask or "no target",
with p(no target)), whether the noun is in the checkpoint's vocabulary, and whether the photo world
shows that noun only as drawings (cat, cup and spoon are drawn stamps only: no photographed one). The
photos are the CC0 / public-domain scikit-image samples bundled in assets/examples (see LICENSES.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (file, expressions) — the first expressions name nouns of the photo world, the last ones do not.
PHOTOS = [
    ("chelsea.png", ["the cat", "the animal", "the dog", "the two cats"]),
    ("coffee.jpg", ["the cup", "the spoon", "the cup of coffee", "the saucer"]),
    ("astronaut.jpg", ["the flag", "the woman", "the helmet", "the rocket"]),
]
# scikit-learn's two sample photos (CC BY 2.0, Flickr users danielbuechele and vultilion; see
# sklearn/datasets/images/README.txt): read from the installed package with --sklearn-photos and never
# written into this repository. The dahlia is one of the few real photos at hand of a noun the photo world
# shows as photographs ("flower"); china.jpg has trees and a building.
SKLEARN_PHOTOS = [
    ("flower.jpg", ["the flower", "every plant", "the rose", "the car"]),
    ("china.jpg", ["the tree", "the trees", "the building", "the car"]),
]
TILE = 320


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "real-photos.png"))
    ap.add_argument("--json", default=None, help="also write the answers as JSON")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sklearn-photos", action="store_true",
                    help="use scikit-learn's sample photos (CC BY 2.0, from the installed package) instead of "
                         "the bundled ones; give --out outside the repository")
    args = ap.parse_args()

    import cv2
    import numpy as np
    import torch

    from app.render import segmentation_view
    from mabp import build_mabp
    from mabp.image_files import read_image_file
    from mabp.predictor import MABPPredictor
    from mabp.registry import SHIPPED_CHECKPOINT, load_checkpoint
    from mabp.vocabulary import ModelVocabulary
    from train.data.synthgres.photo import drawn_only_nouns_in

    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint or SHIPPED_CHECKPOINT)
    ckpt = load_checkpoint(path)
    vocab = ModelVocabulary.from_checkpoint(ckpt)
    predictor = MABPPredictor(build_mabp(checkpoint=ckpt))
    rows, answers = [], []
    if args.sklearn_photos:
        import sklearn

        folder, photos = Path(sklearn.__file__).parent / "datasets" / "images", SKLEARN_PHOTOS
        if Path(args.out).resolve() == (ROOT / "docs" / "real-photos.png").resolve():
            print("error: --sklearn-photos draws CC BY 2.0 photos; write the figure outside the repository "
                  "with --out", file=sys.stderr)
            return 2
    else:
        folder, photos = ROOT / "assets" / "examples", PHOTOS
    for name, texts in photos:
        image = read_image_file(folder / name)
        image = getattr(image, "image", image)
        predictor.set_image(image)
        tiles = []
        for text in texts:
            r = predictor.predict(text)
            known = None if vocab is None else not vocab.is_out_of_vocabulary(text)
            view = segmentation_view(image, r.mask, "overlay") if not r.no_target else image.copy()
            h, w = view.shape[:2]
            s = TILE / max(h, w)
            tile = np.full((TILE + 44, TILE, 3), 255, np.uint8)
            small = cv2.resize(view, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            tile[44:44 + small.shape[0], :small.shape[1]] = small
            verdict = f"no target (p {r.nt_prob:.2f})" if r.no_target else \
                f"target {100 * r.area_fraction:.1f}% (p_nt {r.nt_prob:.2f})"
            drawn = drawn_only_nouns_in(text)
            word = "" if known is None else ("  [unknown words]" if not known else
                                             f"  [knows '{drawn[0]}' from drawings only]" if drawn else
                                             "  [knows the words]")
            cv2.putText(tile, f'"{text}"', (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(tile, verdict + word, (4, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                        (160, 0, 0) if r.no_target else (0, 110, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
            answers.append({"image": name, "text": text, "no_target": bool(r.no_target), "nt_prob": float(r.nt_prob),
                            "area_fraction": float(r.area_fraction), "in_vocabulary": known,
                            "nouns_seen_only_as_drawings": drawn})
        rows.append(np.concatenate(tiles, axis=1))
    figure = np.concatenate(rows, axis=0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({figure.shape[1]}x{figure.shape[0]}) for {path.name}")
    for a in answers:
        print(f"  {a['image']:14s} {a['text']!r:24s} -> " + ("no target" if a["no_target"] else
              f"target {100 * a['area_fraction']:.1f} %") + f" (p_nt {a['nt_prob']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(answers, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
