"""Frame-by-frame video segmentation: MABPPredictor.predict_video (text encoded once per clip, the same
answers as frame-by-frame predict), mabp.video.segment_clip outputs and its no-half-written guarantee,
`python -m train.predict --video`, and the app's Video tab callback."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.image_io import InputError
from mabp.predictor import MABPPredictor
from mabp.video import segment_clip
from mabp.video_io import VideoLimits, read_frames
from train.data.synthgres.video import generate_clip, write_clip

pytestmark = pytest.mark.usefixtures("single_thread")
N = 8


@pytest.fixture(scope="module")
def predictor() -> MABPPredictor:
    torch.manual_seed(0)
    return MABPPredictor(build_mabp("tiny"))


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    clip = generate_clip("val", 2, num_frames=N, size=96)
    return write_clip(clip, tmp_path_factory.mktemp("clip") / "clip.mp4", fps=8)


def test_predict_video_encodes_the_text_once_and_matches_predict(predictor, clip_file, monkeypatch):
    frames = read_frames(clip_file)
    calls = []
    real = predictor.model.encode_text
    monkeypatch.setattr(predictor.model, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    predictor._lang.clear()
    got = list(predictor.predict_video(frames, ["the red shape", "all circles"]))
    assert len(calls) == 2  # two expressions, once each for the whole clip
    assert [g.index for g in got] == list(range(N)) and all(len(g.results) == 2 for g in got)
    fresh = MABPPredictor(predictor.model)
    for g, frame in zip(got, frames):
        fresh.set_image(frame)
        for text, r in zip(["the red shape", "all circles"], g.results):
            ref = fresh.predict(text)
            assert np.array_equal(r.mask, ref.mask) and r.nt_prob == pytest.approx(ref.nt_prob, abs=1e-6)
    # (index, frame) pairs keep their indices; a bad expression fails before any frame is read.
    assert [g.index for g in predictor.predict_video([(4, frames[0]), (9, frames[1])], "x")] == [4, 9]
    with pytest.raises(InputError, match="empty"):
        next(predictor.predict_video(iter(()), "   "))


def test_segment_clip_writes_a_playable_overlay_masks_and_timeline(predictor, clip_file, tmp_path):
    progress = []
    out = segment_clip(predictor, clip_file, "the red shape", out_video=tmp_path / "o.mp4", masks=tmp_path / "m",
                       timeline=tmp_path / "o.timeline.json", stride=2,
                       progress=lambda d, t, fps: progress.append((d, t)))
    assert out.frames == N // 2 and progress[-1] == (N // 2, N // 2)
    overlay = read_frames(out.video)
    assert len(overlay) == N // 2 and overlay[0].shape == (96, 96, 3)
    pngs = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert pngs == [f"{i:05d}.png" for i in range(0, N, 2)]
    m0 = cv2.imread(str(tmp_path / "m" / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert m0.shape == (96, 96) and set(np.unique(m0)) <= {0, 255}
    tl = json.loads((tmp_path / "o.timeline.json").read_text())
    assert [r["frame"] for r in tl["frames"]] == list(range(0, N, 2)) and tl["stride"] == 2
    assert all(0 <= r["nt_prob"] <= 1 and isinstance(r["no_target"], bool) for r in tl["frames"])
    assert (tmp_path / "o.timeline.csv").read_text().splitlines()[0] == "frame,time_s,no_target,nt_prob,area_fraction"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # The same masks as COCO RLE.
    from pycocotools import mask as mask_utils

    out2 = segment_clip(predictor, clip_file, "the red shape", masks=tmp_path / "m.json", stride=2, mask_format="rle")
    rle = json.loads(out2.masks.read_text())
    r = dict(rle["frames"]["0"], counts=rle["frames"]["0"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(r).astype(bool), m0 > 0)


def test_failures_leave_nothing_half_written(predictor, clip_file, tmp_path, monkeypatch):
    outs = dict(out_video=tmp_path / "o.mp4", masks=tmp_path / "m", timeline=tmp_path / "t.json")
    with pytest.raises(InputError, match="over the 3 frame limit"):
        segment_clip(predictor, clip_file, "x", limits=VideoLimits(max_frames=3), **outs)
    with pytest.raises(InputError, match="not a video"):
        segment_clip(predictor, Path(__file__), "x", **outs)
    with pytest.raises(InputError, match="expression is empty"):
        segment_clip(predictor, clip_file, " ", **outs)
    assert list(tmp_path.iterdir()) == []
    real = predictor.predict
    seen = []

    def fail_on_third(*a, **k):
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(predictor, "predict", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        segment_clip(predictor, clip_file, "x", **outs)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files"):
        segment_clip(predictor, clip_file, "x", masks=tmp_path / "m")


def test_predict_cli_video(clip_file, tmp_path, capsys):
    from train.predict import main

    code = main(["--video", str(clip_file), "--text", "the red shape", "--preset", "tiny", "--out",
                 str(tmp_path / "out.mp4"), "--masks", str(tmp_path / "masks"), "--stride", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = json.loads(captured.out.strip().splitlines()[-1])
    assert info["frames"] == 3 and info["fps"] > 0 and Path(info["overlay"]).is_file()
    assert len(read_frames(info["overlay"])) == 3 and len(list((tmp_path / "masks").iterdir())) == 3
    assert (tmp_path / "out.timeline.json").is_file() and (tmp_path / "out.timeline.csv").is_file()
    assert "frames/s" in captured.err
    # Bad input: exit 2, one line, nothing written.
    bad = tmp_path / "bad"
    for args, needle in ((["--video", str(tmp_path / "nope.mp4"), "--text", "x"], "no such video file"),
                         (["--video", str(clip_file), "--text", "a", "b"], "exactly one --text"),
                         (["--video", str(clip_file), "--text", "x", "--stride", "0"], "--stride must be >= 1"),
                         (["--video", str(clip_file), "--text", "x", "--max-frames", "2"], "over the 2 frame limit")):
        assert main(args + ["--preset", "tiny", "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert needle in err, err
    assert not bad.exists()


def test_app_video_tab_callback_on_a_generated_clip(predictor, clip_file, tmp_path):
    from app.video import VideoCallbacks, load_video_examples

    cb = VideoCallbacks(predictor, folder=tmp_path / "app")
    steps = []
    video, plot, masks, summary = cb.segment_video(str(clip_file), "the red shape", 2, 0.5, "any",
                                             progress=lambda frac, desc="": steps.append(frac))
    assert len(read_frames(video)) == N // 2
    nt = plot[plot["series"] == "p(no target)"]
    assert len(nt) == N // 2 and nt["probability"].between(0, 1).all()
    with zipfile.ZipFile(masks) as z:
        names = z.namelist()
    assert sum(n.startswith("masks/") for n in names) == N // 2 and "timeline.csv" in names
    assert f"{N // 2} frames" in summary and steps and steps[-1] == pytest.approx(1.0)
    assert cb.predictor is not predictor and cb.predictor.model is predictor.model and not cb.predictor.has_image
    # Bad inputs: a message, empty outputs, never an exception.
    for args, needle in (((None, "x"), "No clip was given"), ((str(clip_file), " "), "expression is empty"),
                         ((__file__, "x"), "not a video"), ((str(clip_file), "x", 0), "stride must be >= 1"),
                         ((str(clip_file), "x", 1, 1.5), "threshold must be between 0 and 1")):
        out = cb.segment_video(*args, progress=lambda *a, **k: None)
        assert out[0] is None and out[2] is None and needle in out[3], out[3]
    long_cb = VideoCallbacks(predictor, folder=tmp_path / "app2", limits=VideoLimits(max_frames=2))
    assert "frame limit" in long_cb.segment_video(str(clip_file), "x", progress=lambda *a, **k: None)[3]
    rows = load_video_examples()
    assert rows and all(Path(r[0]).is_file() and r[1] for r in rows)


def test_bundled_example_clips_are_small_generated_and_playable():
    folder = Path(__file__).resolve().parents[1] / "assets" / "examples" / "video"
    manifest = json.loads((folder / "examples.json").read_text())
    total = 0
    for item in manifest:
        clip = folder / item["file"]
        total += clip.stat().st_size
        frames = read_frames(clip)
        assert len(frames) == 48 and frames[0].shape == (320, 320, 3)
        assert "SynthGRES" in item["source"]
    assert total < 300_000
