"""SynthGRES video clips, their MeViS-layout export, the MeViS loader (eval + §IV-D 1-in-5 training
sampler), the J&F evaluator and `train.fit --dataset mevis`, all offline on a generated export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train.data import build_dataset
from train.data.mevis import MeViS
from train.data.refer_common import DatasetError
from train.data.synthgres.video import export_mevis, generate_clip

pytestmark = pytest.mark.usefixtures("single_thread")
FRAMES = 12


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mevis")
    export_mevis(root, "train", source_split="train", num_videos=3, num_frames=FRAMES, size=96)
    export_mevis(root, "valid_u", source_split="val", num_videos=2, num_frames=FRAMES, size=96)
    export_mevis(root, "valid", source_split="val", num_videos=1, num_frames=FRAMES, size=96, with_masks=False)
    return root


# -------------------------------------------------------------------------------------- clips
def test_clips_move_bounce_and_keep_their_meaning():
    clip = generate_clip("val", 5, num_frames=30, size=128)
    again = generate_clip("val", 5, num_frames=30, size=128)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames))  # a pure function
    assert len(clip.frames) == 30 and clip.frames[0].shape == (128, 128, 3)
    assert not np.array_equal(clip.frames[0], clip.frames[-1])  # something moved
    assert 1 <= len(clip.expressions) <= 4
    # Visible masks are disjoint (one painted object per pixel) and each object keeps its size class.
    for t in (0, 15, 29):
        stack = np.stack(clip.visible[t])
        assert stack.shape == (len(clip.objects), 128, 128) and stack.sum(0).max() <= 1
    # Every kept expression is unique in its clip and has a target set (possibly empty: no-target).
    assert len({e.sentence for e in clip.expressions}) == len(clip.expressions)
    moved = [not np.array_equal(clip.visible[0][i], clip.visible[-1][i]) for i in range(len(clip.objects))]
    assert any(moved)

def test_trajectories_are_constant_velocity_and_bounce_inside_the_canvas():
    from train.data.synthgres.scene import _EXTENT, generate_scene
    from train.data.synthgres.video import _trajectories

    base = generate_scene(np.random.default_rng(7), 128, "val")
    traj = _trajectories(np.random.default_rng(8), base, 300)
    ext = np.array([_EXTENT[o.shape] * o.radius + 1.0 for o in base.objects])
    assert (traj[..., 0] >= ext - 1e-9).all() and (traj[..., 0] <= 128 - ext + 1e-9).all()
    assert (traj[..., 1] >= ext - 1e-9).all() and (traj[..., 1] <= 128 - ext + 1e-9).all()
    step = np.diff(traj, axis=0)
    speed = np.linalg.norm(step, axis=-1)
    moving = speed.max(0) > 0
    assert moving.any()
    # Constant speed away from the walls; the direction flips at a wall (a bounce) for a moving object.
    for i in np.nonzero(moving)[0]:
        assert np.median(speed[:, i]) == pytest.approx(speed[:, i].max(), rel=1e-6)
        assert (np.sign(step[:, i, 0]) != np.sign(step[0, i, 0])).any() or (np.sign(step[:, i, 1]) != np.sign(step[0, i, 1])).any()


def test_stability_filter_rejects_expressions_whose_meaning_moves():
    from train.data.synthgres.meaning import Extreme, Filter
    from train.data.synthgres.video import _frame_scene, _stable
    from train.data.synthgres.grammar import Expression
    from train.data.synthgres.scene import generate_scene

    rng = np.random.default_rng(3)
    base = None
    while base is None or len(base.objects) < 2:
        base = generate_scene(rng, 128, "val")
    pos = np.array([(o.cx, o.cy) for o in base.objects])
    left = int(np.argmin(pos[:, 0]))
    expr = Expression("the leftmost shape", Extreme(Filter(), "left"), (left,), {})
    still = [_frame_scene(base, pos) for _ in range(3)]
    if expr.meaning.evaluate(still[0]).ok:
        assert _stable(expr, still)
    # Mirror the positions: the leftmost object becomes the rightmost, so the meaning changes.
    mirrored = pos.copy()
    mirrored[:, 0] = 128 - mirrored[:, 0]
    assert not _stable(expr, still + [_frame_scene(base, mirrored)])


# -------------------------------------------------------------------------------------- export + loader
def test_export_layout_and_round_trip(export):
    meta = json.loads((export / "valid_u" / "meta_expressions.json").read_text())
    masks = json.loads((export / "valid_u" / "mask_dict.json").read_text())
    vid = sorted(meta["videos"])[0]
    v = meta["videos"][vid]
    assert v["frames"] == [f"{t:05d}" for t in range(FRAMES)]
    assert (export / "valid_u" / "JPEGImages" / vid / "00000.jpg").is_file()
    e = v["expressions"]["0"]
    assert {"exp", "obj_id", "anno_id"} <= set(e)
    ds = build_dataset("mevis", "valid_u", root=str(export))
    assert isinstance(ds, MeViS) and ds.has_masks and len(ds) == len(ds.expressions) * FRAMES
    # Every target mask equals the generator's union of visible masks, frame by frame.
    for ex in ds.expressions:
        clip = generate_clip("val", int(ex.video.rsplit("_", 1)[1]), num_frames=FRAMES, size=96)
        gen = clip.expressions[int(ex.exp_id)]
        assert ex.sentence == gen.sentence and ex.obj_ids == gen.target_ids
        for t in range(FRAMES):
            assert np.array_equal(ds.target_mask(ex, t), clip.target_mask(t, gen.target_ids))
    for rles in masks.values():
        assert len(rles) == FRAMES and all(r is None or set(r) == {"size", "counts"} for r in rles)
    s = ds[0]
    assert s["image"].shape == (96, 96, 3) and s["mask"].dtype == bool and s["no_target"] == (not s["mask"].any())
    assert s["sentence"] == ds.expressions[0].sentence and s["image_id"] == f"{ds.expressions[0].video}/00000"
    # Squash to the model size, as the other datasets do.
    assert build_dataset("mevis", "valid_u", root=str(export), size=64)[0]["image"].shape == (64, 64, 3)


def test_valid_split_has_no_masks(export):
    ds = build_dataset("mevis", "valid", root=str(export))
    assert not ds.has_masks and len(ds.expressions) >= 1
    with pytest.raises(DatasetError, match="only on the evaluation server"):
        ds.target_mask(ds.expressions[0], 0)
    with pytest.raises(DatasetError, match="cannot be trained on"):
        build_dataset("mevis", "valid", root=str(export), mode="train")


def test_training_sampler_draws_one_frame_per_window_of_five(export):
    ds = build_dataset("mevis", "train", root=str(export), mode="train")
    per_expr = -(-FRAMES // 5)  # windows [0, 5), [5, 10), [10, 12)
    assert len(ds) == len(ds.expressions) * per_expr
    draws = {}
    for epoch in range(6):
        ds.set_epoch(epoch)
        for k in range(len(ds)):
            i, t = ds.frame_index(k)
            start = (k % per_expr) * 5
            assert i == k // per_expr and start <= t < min(start + 5, FRAMES)
            draws.setdefault(k, set()).add(t)
    assert any(len(v) > 1 for v in draws.values())  # other epochs, other frames
    ds.set_epoch(2)
    first = [ds.frame_index(k) for k in range(len(ds))]
    ds.set_epoch(2)
    assert first == [ds.frame_index(k) for k in range(len(ds))]  # deterministic (exact resume)
    s = ds[1]
    assert s["frame"] == f"{first[1][1]:05d}"


def test_bad_mevis_files_name_the_file(tmp_path, export):
    import shutil

    with pytest.raises(DatasetError, match="MeViS root not found"):
        MeViS(str(tmp_path / "nope"), "valid_u")
    with pytest.raises(DatasetError, match="meta_expressions.json is missing"):
        MeViS(str(tmp_path), "valid_u")
    bad = tmp_path / "bad"
    shutil.copytree(export / "valid_u", bad / "valid_u")
    masks_path = bad / "valid_u" / "mask_dict.json"
    masks = json.loads(masks_path.read_text())
    masks[next(iter(masks))] = masks[next(iter(masks))][:3]
    masks_path.write_text(json.dumps(masks))
    with pytest.raises(DatasetError, match="has 3 masks but video"):
        MeViS(str(bad), "valid_u")
    masks_path.write_text("{not json")
    with pytest.raises(DatasetError, match="mask_dict.json .* is not valid JSON"):
        MeViS(str(bad), "valid_u")
    masks_path.write_text("{}")
    with pytest.raises(DatasetError, match="anno_id .* is missing"):
        MeViS(str(bad), "valid_u")


# -------------------------------------------------------------------------------------- evaluation
def test_ground_truth_scores_100_and_nothing_scores_the_empty_share(export):
    from mabp.video_metrics import VideoJFMeter

    ds = build_dataset("mevis", "valid_u", root=str(export))
    oracle, blank = VideoJFMeter(), VideoJFMeter()
    for e in ds.expressions:
        for t in range(FRAMES):
            gt = ds.target_mask(e, t)
            oracle.update(e.key, gt, gt)
            blank.update(e.key, np.zeros_like(gt), gt)
    assert oracle.compute()["J&F"] == 100.0
    empty_share = np.mean([[not ds.target_mask(e, t).any() for t in range(FRAMES)] for e in ds.expressions], axis=1)
    assert blank.compute()["J"] == pytest.approx(100 * float(np.mean(empty_share)))


def test_evaluate_cli_on_the_synthetic_export(export, tmp_path, capsys):
    from mabp.registry import build_mabp, save_checkpoint
    from train.evaluate import main

    ckpt = save_checkpoint(build_mabp("tiny"), tmp_path / "tiny.pt")
    out = tmp_path / "ev"
    code = main(["--checkpoint", str(ckpt), "--dataset", "mevis", "--split", "valid_u", "--root", str(export),
                 "--out", str(out), "--no-progress", "--limit", "3"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "| ours |" in text and "J&F" in text and "SynthGRES video export" in text
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    assert m["n_expressions"] == 3 and 0 <= m["J"] <= 100 and 0 <= m["F"] <= 100
    assert m["J&F"] == pytest.approx((m["J"] + m["F"]) / 2)
    assert len((out / "per_expression.jsonl").read_text().splitlines()) == 3
    # The server-only split is refused with a message.
    code = main(["--checkpoint", str(ckpt), "--dataset", "mevis", "--split", "valid", "--root", str(export),
                 "--out", str(out), "--no-progress"])
    assert code == 2 and "only on the evaluation server" in capsys.readouterr().err


def test_paper_row_beside_ours_on_real_mevis_names():
    from train.video_eval import format_video_report

    result = {"metrics": {"J": 30.0, "F": 40.0, "J&F": 35.0, "n_expressions": 1, "n_frames": 2},
              "breakdown": {}, "threshold": 0.5, "nt_rule": "any", "n_frames": 2, "wall_time_s": 1.0,
              "frames_per_s": 2.0}
    text = format_video_report(result, "valid_u")
    assert "| ours | 35.00 | 30.00 | 40.00 |" in text and "| paper (Table VII, MABP) | 50.1 | 46.2 | 54.7 |" in text


# -------------------------------------------------------------------------------------- training
def test_fit_trains_on_mevis_through_the_engine(export, tmp_path):
    from train.fit import fit

    tiny = Path(__file__).resolve().parents[1] / "train" / "configs" / "tiny_synthgres.yaml"
    epochs = []
    extra = {"data": {"dataset": "mevis", "root": str(export), "train_split": "train", "val_split": "valid_u",
                      "size": None, "epoch_length": 4, "val_samples": 2, "num_workers": 0},
             "schedule": {"max_steps": 3},
             "train": {"batch_size": 2, "log_every": 1, "eval_every": 3, "ckpt_every": 3,
                       "output_dir": str(tmp_path / "run"), "tensorboard": False}}
    result = fit(str(tiny), extra=extra, hooks=[lambda t: epochs.append(t.train_ds.epoch)])
    assert result["step"] == 3 and epochs == [0, 0, 1]  # 2 steps per 4-item epoch; set_epoch each epoch
    assert result["last_metrics"]["n"] == 2
