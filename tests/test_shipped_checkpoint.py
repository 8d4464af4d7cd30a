"""The shipped checkpoint: size limit, self-contained rebuild, and that it really segments."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.metrics import GRESMeter
from mabp.predictor import MABPPredictor
from train.data.synthgres import SynthGRES

CKPT = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "mabp-lite-synthgres.pt"

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="no shipped checkpoint in this checkout")


def test_shipped_checkpoint_is_small_and_rebuilds_alone():
    assert CKPT.stat().st_size <= 50 * 2**20
    raw = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert raw["format"] == "mabp" and raw["config"]["preset"] == "lite" and raw["external_sha256"]
    model = build_mabp(checkpoint=CKPT)
    assert sum(p.numel() for p in model.parameters()) == 32_052_656  # lite at 256², 2 x 2 deformable encoder


def test_shipped_checkpoint_segments_far_better_than_chance():
    torch.manual_seed(0)
    pred = MABPPredictor(build_mabp(checkpoint=CKPT))
    ds = SynthGRES("val", size=320)
    meter = GRESMeter()
    for k in range(24):  # the first four val scenes
        s = ds[k]
        if k == 0 or s["image_id"] != ds[k - 1]["image_id"]:
            pred.set_image(s["image"])
        r = pred.predict(s["sentence"])
        meter.update(r.raw_mask, s["mask"], r.no_target, s["no_target"])
    # measured on these 24: shipped (stage 4, the GPU fine-tune) 85.5; stage 3 at step 3,510 69.7; the first
    # shipped checkpoint 61.8; the lite preset with an untrained decoder 20.8
    assert meter.compute()["gIoU"] > 50
