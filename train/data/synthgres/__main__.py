"""Command line for SynthGRES.

    python -m train.data.synthgres export --split val --out DIR [--num N] [--size 320|HxW] [--rle] [--seed S]
    python -m train.data.synthgres show --split val --index 0      # print one sample's text and tags
    python -m train.data.synthgres export --world photo --split val --out DIR   # the photo world
    python -m train.data.synthgres pack-photo-assets --out DIR     # its images, for a machine without them
    python -m train.data.synthgres export-video --out DIR [--mevis-split valid_u] [--videos 24] [--frames 24]
        # moving-shape clips in the MeViS layout (train/data/synthgres/video.py)
"""

from __future__ import annotations

import argparse
import sys

from .vocab import SPLITS


def _size(text: str) -> int | tuple[int, int]:
    """'320' -> 320, '240x320' -> (240, 320) as (height, width)."""
    if "x" in text.lower():
        h, w = text.lower().split("x")
        return int(h), int(w)
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.synthgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a split in the gRefCOCO layout")
    ex.add_argument("--split", choices=SPLITS, required=True)
    ex.add_argument("--out", required=True, help="output directory (images/, instances.json, grefs(unc).json)")
    ex.add_argument("--num", type=int, default=None,
                    help="number of expressions (default: 2000 for val/testA/testB, 20000 for train)")
    ex.add_argument("--size", type=_size, default=320, help="canvas: 320 or HxW, e.g. 240x320")
    ex.add_argument("--rle", action="store_true", help="RLE segmentations instead of polygons")
    ex.add_argument("--seed", type=int, default=None, help="base seed (default: the published benchmark)")
    ex.add_argument("--world", choices=("shapes", "photo", "mixed"), default="shapes",
                    help="shapes (default), photo (real object cut-outs; needs the Debian packages) or mixed")
    ex.add_argument("--photographic-only", action="store_true", help="photo/mixed: photographs only")
    pk = sub.add_parser("pack-photo-assets", help="copy the photo world's stamps and backgrounds into a folder "
                        "(for a machine without the Debian packages)")
    pk.add_argument("--out", required=True)
    ev = sub.add_parser("export-video", help="write moving-shape clips in the MeViS layout")
    ev.add_argument("--out", required=True, help="MeViS root: writes <out>/<mevis-split>/")
    ev.add_argument("--mevis-split", default="valid_u", help="MeViS split folder name (train, valid_u, valid)")
    ev.add_argument("--split", choices=SPLITS, default=None,
                    help="SynthGRES source split (default: train for train, val otherwise)")
    ev.add_argument("--videos", type=int, default=24)
    ev.add_argument("--frames", type=int, default=24)
    ev.add_argument("--expressions", type=int, default=4, help="at most this many per clip")
    ev.add_argument("--size", type=int, default=320)
    ev.add_argument("--no-masks", action="store_true", help="no mask_dict.json (like MeViS's valid)")
    ev.add_argument("--seed", type=int, default=None)
    sh = sub.add_parser("show", help="print samples")
    sh.add_argument("--split", choices=SPLITS, default="val")
    sh.add_argument("--index", type=int, default=0)
    sh.add_argument("--count", type=int, default=8)
    sh.add_argument("--world", choices=("shapes", "photo", "mixed"), default="shapes")
    args = parser.parse_args(argv)

    if args.cmd == "export":
        from .export import export_split

        from .photo import PhotoWorldUnavailable

        kw = {"photographic_only": True} if args.photographic_only else {}
        try:
            summary = export_split(args.split, args.out, num=args.num, size=args.size, rle=args.rle, seed=args.seed,
                                   world=args.world, **kw)
        except PhotoWorldUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {summary['refs']} refs ({summary['no_target']} no-target), {summary['images']} images, "
              f"{summary['annotations']} annotations to {args.out}")
        return 0
    if args.cmd == "export-video":
        from .video import export_mevis

        src = args.split or ("train" if args.mevis_split == "train" else "val")
        try:
            dest = export_mevis(args.out, args.mevis_split, source_split=src, num_videos=args.videos,
                                num_frames=args.frames, size=args.size, n_expressions=args.expressions,
                                with_masks=not args.no_masks, seed=args.seed, progress=True)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.videos} clips of {args.frames} frames (SynthGRES {src}) to {dest}")
        return 0
    from .dataset import SynthGRES
    from .photo import PhotoWorldUnavailable

    if args.cmd == "pack-photo-assets":
        from .photo import pack_assets

        try:
            r = pack_assets(args.out)
        except PhotoWorldUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {r['stamps']} stamps and {r['backgrounds']} backgrounds ({r['bytes'] / 2**20:.1f} MB) to "
              f"{args.out}; use them with MABP_TUXPAINT_STAMPS={args.out}/stamps MABP_BACKGROUNDS={args.out}/backgrounds")
        return 0

    try:
        ds = SynthGRES(args.split, world=args.world)
    except PhotoWorldUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k in range(args.index, min(args.index + args.count, len(ds))):
        s = ds[k]
        print(f"{k:6d} img {s['image_id']} targets {s['target_ids']!s:14s} {s['tags']['target']:11s} "
              f"{s['tags']['type']:11s} {s['sentence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
