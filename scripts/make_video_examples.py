"""Generate the app's example clips: SynthGRES scenes whose shapes move and bounce (train/data/synthgres/video.py).

    python scripts/make_video_examples.py [--out assets/examples/video]

Writes <name>.mp4 (H.264, 320x320, 48 frames at 12 fps = 4 s) and examples.json ([{file, expressions}]).
The expressions are the clip's own generated ones, re-evaluated on every frame (same meaning and
target set throughout), so each example has a known answer. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.data.synthgres.video import generate_clip, write_clip  # noqa: E402

# (split, clip index): chosen for a mix of single, multi-object and no-target expressions.
CLIPS = (("val", 1), ("val", 3))
FRAMES, FPS = 48, 12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "assets" / "examples" / "video"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for split, index in CLIPS:
        clip = generate_clip(split, index, num_frames=FRAMES)
        name = f"{clip.name}.mp4"
        write_clip(clip, out / name, fps=FPS)
        manifest.append({"file": name, "expressions": [e.sentence for e in clip.expressions],
                         "targets": [list(e.target_ids) for e in clip.expressions],
                         "source": f"SynthGRES video, split {split}, clip {index}, {FRAMES} frames at {FPS} fps"})
        print(out / name, (out / name).stat().st_size, "bytes")
    (out / "examples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
