"""The SynthGRES dataset: deterministic, index-addressable samples in the shared GRES sample schema.

Index layout.  Images come in blocks of 16 that together carry exactly 96 expressions; inside a block
each image gets 4-8 expressions (drawn from the block's own seed, summing to 96).  Sample k therefore
maps in O(1) to (image index, expression slot), consecutive samples share a scene (cheap with the
small LRU cache), and every sample is still a pure function of (split seed, k): the scene is rebuilt
from its image seed and the expressions from their own seed, in any process and any access order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np

from .grammar import Expression, ExpressionGenerator, BASE_PROFILE, generate_expressions
from .scene import Scene, generate_scene
from .vocab import (DEFAULT_TRAIN_LENGTH, FIXED_SPLIT_LENGTH, IMAGE_ID_STRIDE, REF_ID_STRIDE, SPLIT_CODE,
                    SPLITS)

WORLDS: tuple[str, ...] = ("shapes", "photo", "mixed")
MIXED_PHOTO_SHARE = 0.5  # mixed world: P(an image is a photo-world scene)

IMAGES_PER_BLOCK = 16
EXPRESSIONS_PER_BLOCK = 96  # mean 6 expressions per image
MIN_EXPRESSIONS, MAX_EXPRESSIONS = 4, 8
DEFAULT_BASE_SEED = 0x5EED_6E5

# Independent random streams per image, so that e.g. changing the grammar does not change scenes.
_STREAM_SCENE, _STREAM_EXPR, _STREAM_BLOCK, _STREAM_WORLD = 1, 2, 3, 4


def split_seed(split: str, seed: int | None = None) -> int:
    """The 64-bit seed of a split (different splits always get different streams)."""
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown SynthGRES split {split!r}; expected one of {SPLITS}")
    base = DEFAULT_BASE_SEED if seed is None else int(seed)
    return int(np.random.SeedSequence([base, SPLIT_CODE[split]]).generate_state(1, np.uint64)[0])


@lru_cache(maxsize=4096)
def _block_counts(sseed: int, block: int) -> tuple[int, ...]:
    """Expressions per image in a block: each in [4, 8], summing to EXPRESSIONS_PER_BLOCK."""
    rng = np.random.default_rng([sseed, block, _STREAM_BLOCK])
    counts = [EXPRESSIONS_PER_BLOCK // IMAGES_PER_BLOCK] * IMAGES_PER_BLOCK
    # Random pairwise transfers keep the sum fixed while spreading counts over [4, 8].
    for i, j in rng.integers(IMAGES_PER_BLOCK, size=(48, 2)).tolist():
        if i != j and counts[i] < MAX_EXPRESSIONS and counts[j] > MIN_EXPRESSIONS:
            counts[i] += 1
            counts[j] -= 1
    return tuple(counts)


def _block_starts(sseed: int, block: int) -> tuple[int, ...]:
    counts = _block_counts(sseed, block)
    return tuple(int(v) for v in np.concatenate([[0], np.cumsum(counts)[:-1]]))


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or an (H, W) pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


class SynthGRES:
    """Procedural GRES dataset.

    Args:
        split: "train" (unlimited stream), "val", "testA" or "testB" (2,000 expressions each).
        size: canvas size, an int (square) or (height, width).
        seed: base seed; None = the fixed default (the published benchmark).
        length: train: epoch length (default 20,000); fixed splits: an optional prefix <= 2,000.
        epoch: train only — epoch e serves stream samples [e * length, (e + 1) * length).
        cache_size: number of recently used scenes kept in memory.
        world: "shapes" (the original world, unchanged), "photo" (real object cut-outs on photos;
            README "The SynthGRES photo world") or "mixed" (each image is one or the other, 50/50).
        photographic_only: photo / mixed: paste photographs only (no drawn stamps).
        stamps_dir, background_dirs: photo / mixed: where the Debian packages' images are (default:
            $MABP_TUXPAINT_STAMPS / $MABP_BACKGROUNDS, else the Debian install paths).
        manifest: photo / mixed: a manifest JSON other than the committed one (tests).
        closeup_share: photo / mixed, train stream only: the share of photo-world scenes that are
            close-ups (one object filling 0.6-0.95 of the short side; photo_scene.generate_photo_scene).
            Default 0: the stream is unchanged. The fixed splits ignore it (the benchmark stays fixed).

    `ds[k]` returns the shared sample dict (see `SynthGRES.sample`).

    Raises:
        ValueError: unknown split / world, bad length.
        PhotoWorldUnavailable (a RuntimeError): world "photo"/"mixed" without the Debian packages; the
            message names what to apt-get install.
    """

    def __init__(self, split: str, size: int | tuple[int, int] = 320, seed: int | None = None,
                 length: int | None = None, epoch: int = 0, cache_size: int = 8, world: str = "shapes",
                 photographic_only: bool = False, stamps_dir: str | None = None,
                 background_dirs: tuple[str, ...] | list[str] | None = None, manifest: str | None = None,
                 closeup_share: float = 0.0) -> None:
        if world not in WORLDS:
            raise ValueError(f"unknown SynthGRES world {world!r}; expected one of {WORLDS}")
        self.world = world
        self.photographic_only = bool(photographic_only)
        if not 0.0 <= float(closeup_share) <= 1.0:
            raise ValueError(f"closeup_share must be between 0 and 1, got {closeup_share}")
        self.closeup_share = float(closeup_share)
        self.assets = self.lexicon = None
        if world != "shapes":
            from .photo import get_assets

            self.assets = get_assets(stamps_dir, tuple(background_dirs) if background_dirs else None, manifest)
            self.lexicon = self.assets.lexicon(self.photographic_only)
        self.split = split
        self.seed_value = split_seed(split, seed)
        self.size = _parse_size(size)
        if split == "train":
            self.length = DEFAULT_TRAIN_LENGTH if length is None else int(length)
        else:
            self.length = FIXED_SPLIT_LENGTH if length is None else int(length)
            if self.length > FIXED_SPLIT_LENGTH:
                raise ValueError(f"{split} has {FIXED_SPLIT_LENGTH} expressions; got length={length}")
            if epoch:
                raise ValueError("epochs only exist for the train stream")
        if self.length <= 0:
            raise ValueError("length must be positive")
        self.epoch = int(epoch)
        self.code = SPLIT_CODE[split]
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_size = max(1, int(cache_size))

    # -- indexing --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, Any]:
        k = int(k)
        if k < 0:
            k += self.length
        if not 0 <= k < self.length:
            raise IndexError(f"sample {k} out of range for {self.split} (len {self.length})")
        return self.sample(self.epoch * self.length + k)

    def set_epoch(self, epoch: int) -> None:
        """Train: move the window of `ds[0:len]` to epoch `epoch` of the unlimited stream."""
        if self.split != "train" and epoch:
            raise ValueError("epochs only exist for the train stream")
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """Stream index -> (image index, expression slot)."""
        block, off = divmod(int(index), EXPRESSIONS_PER_BLOCK)
        starts = _block_starts(self.seed_value, block)
        i = bisect_right(starts, off) - 1
        return block * IMAGES_PER_BLOCK + i, off - starts[i]

    def first_index(self, image_index: int) -> int:
        """Stream index of the first expression of an image."""
        block, i = divmod(int(image_index), IMAGES_PER_BLOCK)
        return block * EXPRESSIONS_PER_BLOCK + _block_starts(self.seed_value, block)[i]

    def num_expressions(self, image_index: int) -> int:
        """How many expressions (4-8) an image carries."""
        block, i = divmod(int(image_index), IMAGES_PER_BLOCK)
        return _block_counts(self.seed_value, block)[i]

    def image_id(self, image_index: int) -> int:
        """Dataset-wide unique image id (split code * 10^7 + image index)."""
        return self.code * IMAGE_ID_STRIDE + int(image_index)

    def ref_id(self, index: int) -> int:
        """Dataset-wide unique ref id (= sent id) of a stream index."""
        return self.code * REF_ID_STRIDE + int(index)

    def file_name(self, image_index: int) -> str:
        """PNG file name used by the exporter (photo / mixed worlds: synthgres-<world>_...)."""
        prefix = "synthgres" if self.world == "shapes" else f"synthgres-{self.world}"
        return f"{prefix}_{self.split}_{int(image_index):07d}.png"

    # -- content -------------------------------------------------------------------------------
    def _entry(self, image_index: int) -> list:
        """Cache slot [scene, expressions-or-None]; expressions are made lazily, so that scene-only
        callers (tests, the app, statistics) skip the grammar.  Their seeds are independent, so the
        result is the same either way."""
        image_index = int(image_index)
        hit = self._cache.get(image_index)
        if hit is not None:
            self._cache.move_to_end(image_index)
            return hit
        rng = np.random.default_rng([self.seed_value, image_index, _STREAM_SCENE])
        if self.image_world(image_index) == "photo":
            from .photo_scene import generate_photo_scene

            scene = generate_photo_scene(rng, self.assets, self.size, self.split, self.photographic_only,
                                         closeup_share=self.closeup_share)
        else:
            scene = generate_scene(rng, self.size, self.split)
        entry = [scene, None]
        self._cache[image_index] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def image_world(self, image_index: int) -> str:
        """"shapes" or "photo": the world of one image (mixed: drawn per image from its own stream)."""
        if self.world != "mixed":
            return self.world
        u = np.random.default_rng([self.seed_value, int(image_index), _STREAM_WORLD]).random()
        return "photo" if u < MIXED_PHOTO_SHARE else "shapes"

    def scene(self, image_index: int) -> Scene:
        """The Scene object of an image (objects, masks, background, rendering)."""
        return self._entry(image_index)[0]

    def expressions(self, image_index: int) -> list[Expression]:
        """The image's expressions (with meaning trees), in slot order."""
        entry = self._entry(image_index)
        if entry[1] is None:
            rng = np.random.default_rng([self.seed_value, int(image_index), _STREAM_EXPR])
            if entry[0].world == "photo":
                from .photo_grammar import generate_photo_expressions

                entry[1] = generate_photo_expressions(entry[0], rng, self.num_expressions(image_index),
                                                      self.lexicon, self.assets.stamps, self.split)
            else:
                entry[1] = generate_expressions(entry[0], rng, self.num_expressions(image_index), self.split)
        return entry[1]

    def sample(self, index: int) -> dict[str, Any]:
        """Sample at a stream index (train: any index >= 0; fixed splits: < 2,000).

        Returns the shared GRES sample dict::

            image (H, W, 3) uint8 RGB, mask (H, W) bool (union of the targets' visible pixels),
            sentence str, no_target bool, target_ids list[int], tags {target, type, nt_kind},
            image_id int, ref_id int, sent_id int, split str

        Photo / mixed worlds add two tags: "world" ("shapes" / "photo") and "group" (the top-level
        taxonomy group of the targets — animals, food, ... — "several", or None for shapes images).
        """
        index = int(index)
        if index < 0 or (self.split != "train" and index >= FIXED_SPLIT_LENGTH):
            raise IndexError(f"stream index {index} out of range for {self.split}")
        image_index, slot = self.locate(index)
        scene = self.scene(image_index)
        e = self.expressions(image_index)[slot]
        rid = self.ref_id(index)
        tags = dict(e.tags)
        if self.world != "shapes":
            tags["world"] = scene.world
            if scene.world == "photo":
                from .photo_grammar import photo_target_group

                tags["group"] = photo_target_group(scene, e, self.lexicon)
            else:
                tags["group"] = None
        return {
            "image": scene.image.copy(),  # a copy: callers may augment in place, the cache must survive
            "mask": scene.union_mask(e.target_ids),
            "sentence": e.sentence,
            "no_target": len(e.target_ids) == 0,
            "target_ids": list(e.target_ids),
            "tags": tags,
            "image_id": self.image_id(image_index),
            "ref_id": rid,
            "sent_id": rid,
            "split": self.split,
        }

    def grouped_order(self, seed: int = 0) -> list[int]:
        """A shuffled order of 0..len-1 that keeps each image's samples together.

        Pass it as a DataLoader sampler when a shuffled order is wanted: images come in random order,
        but the scene cache still serves 4-8 consecutive samples per rendered scene (fully random
        access renders a scene for nearly every sample, ~5x slower).  The train stream itself is
        already random, so plain sequential order is fine too.
        """
        groups: dict[int, list[int]] = {}
        base = self.epoch * self.length
        for k in range(self.length):
            groups.setdefault(self.locate(base + k)[0], []).append(k)
        rng = np.random.default_rng([int(seed), self.epoch, 0x0D0E])
        out: list[int] = []
        for i in rng.permutation(sorted(groups)):
            g = groups[int(i)]
            out.extend(g[int(j)] for j in rng.permutation(len(g)))
        return out

    def num_images(self) -> int:
        """Number of images touched by samples [epoch*len, (epoch+1)*len)."""
        first = self.locate(self.epoch * self.length)[0]
        last = self.locate(self.epoch * self.length + self.length - 1)[0]
        return last - first + 1

    def __repr__(self) -> str:
        w = "" if self.world == "shapes" else f", world={self.world!r}"
        return f"SynthGRES(split={self.split!r}, size={self.size}, len={self.length}, epoch={self.epoch}{w})"


_DATASETS: dict[tuple[str, tuple[int, int], int | None], SynthGRES] = {}


def generate_sample(split: str, index: int, size: int | tuple[int, int] = 320, seed: int | None = None) -> dict[str, Any]:
    """Functional access: sample `index` of a split's stream (same as SynthGRES(split).sample(index))."""
    key = (split, _parse_size(size), seed)
    ds = _DATASETS.get(key)
    if ds is None:
        ds = _DATASETS[key] = SynthGRES(split, size=size, seed=seed)
    return ds.sample(index)


def describe_scene_expressions(scene: Scene, rng: np.random.Generator, n: int = 6,
                               split: str = "train") -> list[tuple[str, list[int], dict[str, str | None]]]:
    """Suggest n evaluated expressions for any scene (shapes or photo world):
    [(sentence, target_ids, tags), ...].

    Raises:
        PhotoWorldUnavailable: a photo scene while the photo world's packages are missing.
    """
    if getattr(scene, "world", "shapes") == "photo":
        from .photo import get_assets
        from .photo_grammar import PHOTO_PROFILES, PhotoExpressionGenerator, generate_photo_expressions

        assets = get_assets()
        lexicon = assets.lexicon()
        exprs = generate_photo_expressions(scene, rng, n, lexicon, assets.stamps, split) \
            if split in ("testA", "testB") else PhotoExpressionGenerator(scene, rng, lexicon, PHOTO_PROFILES["train"]).generate(n)
    else:
        exprs = generate_expressions(scene, rng, n, split) if split in ("testA", "testB") else \
            ExpressionGenerator(scene, rng, BASE_PROFILE).generate(n)
    return [(e.sentence, list(e.target_ids), dict(e.tags)) for e in exprs]


def random_scene(seed: int, size: int | tuple[int, int] = 320, n: int = 6, world: str = "shapes"
                 ) -> tuple[np.ndarray, Scene, list[tuple[str, list[int], dict[str, str | None]]]]:
    """For the app's "new random scene" button: (image, scene, suggestions) from a user seed.

    Args:
        seed: any int; the result is a pure function of (seed, size, n, world).
        size: canvas, int or (height, width).
        n: number of suggested expressions.
        world: "shapes" (default, unchanged), "photo" (real object cut-outs) or "mixed" (the seed
            picks one of the two).

    Returns:
        image (H, W, 3) uint8 RGB, the Scene (scene.world says which world), and n suggestions
        [(sentence, target_ids, tags), ...] whose target sets are evaluated on the scene.

    Scenes follow the train distribution (held-out testA pairs / stamps never appear), so a model
    trained on SynthGRES sees familiar combinations.

    Raises:
        ValueError: unknown world.
        PhotoWorldUnavailable (a RuntimeError): world "photo" / "mixed" without the Debian packages;
            the message names the packages to apt-get install.
    """
    if world not in WORLDS:
        raise ValueError(f"unknown SynthGRES world {world!r}; expected one of {WORLDS}")
    if world == "mixed":
        world = "photo" if np.random.default_rng([int(seed), 0xA99, 2]).random() < MIXED_PHOTO_SHARE else "shapes"
    rng = np.random.default_rng([int(seed), 0xA99])
    if world == "photo":
        from .photo import get_assets
        from .photo_scene import generate_photo_scene

        scene = generate_photo_scene(rng, get_assets(), size, "train")
    else:
        scene = generate_scene(rng, size, "train")
    suggestions = describe_scene_expressions(scene, np.random.default_rng([int(seed), 0xA99, 1]), n)
    return scene.image.copy(), scene, suggestions
