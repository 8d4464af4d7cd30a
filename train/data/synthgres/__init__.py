"""SynthGRES: the procedurally generated GRES benchmark (the spec is this package's docstrings and the README's SynthGRES section).

Public API::

    from train.data.synthgres import SynthGRES, generate_sample, export_split
    ds = SynthGRES("val")            # 2,000 expressions; "train" is an unlimited stream
    s = ds[0]                        # {"image", "mask", "sentence", "no_target", "target_ids", "tags", ...}
    scene = ds.scene(0)              # objects with shape/colour/size/centre/rotation/masks/z-order
    image, scene, suggestions = random_scene(seed=7)   # for the app
    ds = SynthGRES("val", world="photo")   # real object cut-outs (Debian: tuxpaint-stamps-default, ...)
    image, scene, suggestions = random_scene(seed=7, world="photo")   # PhotoWorldUnavailable if missing

CLI: ``python -m train.data.synthgres export --split val --out DIR [--num N] [--size 320] [--rle]``
"""

from .dataset import (WORLDS, SynthGRES, describe_scene_expressions, generate_sample, random_scene, split_seed)
from .export import export_split, mask_to_polygons, mask_to_rle
from .grammar import VOCABULARY, Expression, generate_expressions, target_category
from .meaning import Attr, Difference, Extreme, Filter, Region, Relation, Result, Union
from .photo import PhotoWorldUnavailable, photo_world_available
from .scene import Scene, SceneObject, generate_scene, render
from .vocab import COLOURS, HELD_OUT_PAIRS, SHAPES, SPLITS

__all__ = [
    "SynthGRES", "generate_sample", "export_split", "random_scene", "describe_scene_expressions",
    "split_seed", "mask_to_polygons", "mask_to_rle", "VOCABULARY", "Expression", "generate_expressions",
    "target_category", "Attr", "Difference", "Extreme", "Filter", "Region", "Relation", "Result", "Union",
    "Scene", "SceneObject", "generate_scene", "render", "COLOURS", "HELD_OUT_PAIRS", "SHAPES", "SPLITS",
    "WORLDS", "PhotoWorldUnavailable", "photo_world_available",
]
