"""Guided-filter mask refinement (mabp/mask_refine.py) and where it plugs in: postprocess, the predictor,
train.evaluate and train.calibrate. Off by default ("none" for every preset), so every other test sees the
official bilinear upsampling."""
import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mabp import build_mabp
from mabp.config import InferenceConfig
from mabp.mask_refine import GuidedRefine, guided_refine, refine_from_config, resolve_refine
from mabp.postprocess import postprocess
from mabp.predictor import MABPPredictor
from mabp.registry import load_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_mabp("tiny").eval()


def _reference_guided_filter(image: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter (Algorithm 1 with the 3 x 3 covariance), written independently
    with OpenCV box filters (BORDER_REFLECT_101) and per-pixel numpy solves."""
    box = lambda x: cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT_101)  # noqa: E731
    I = image.astype(np.float64) / 255.0
    mean_i = np.stack([box(I[..., c]) for c in range(3)], -1)
    mean_p = box(p)
    cov_ip = np.stack([box(I[..., c] * p) for c in range(3)], -1) - mean_i * mean_p[..., None]
    sigma = np.empty(p.shape + (3, 3))
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = box(I[..., i] * I[..., j]) - mean_i[..., i] * mean_i[..., j]
    a = np.linalg.solve(sigma + eps * np.eye(3), cov_ip[..., None])[..., 0]
    b = mean_p - (a * mean_i).sum(-1)
    return (np.stack([box(a[..., c]) for c in range(3)], -1) * I).sum(-1) + box(b)


def _square_scene(size: int = 64):
    """An image with a sharp orange rectangle (edges off the stride-4 grid) on a textured blue ground, its
    true mask, and a blurred stride-4 probability map of it upsampled bilinearly (what the model's final
    mask looks like at the output size)."""
    rng = np.random.RandomState(0)
    img = np.zeros((size, size, 3), np.uint8)
    img[...] = (40, 70, 160)
    img = np.clip(img + rng.randint(-12, 12, img.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((size, size), bool)
    truth[18:47, 21:51] = True
    img[truth] = (230, 140, 30)
    coarse = cv2.resize(truth.astype(np.float32), (size // 4, size // 4), interpolation=cv2.INTER_AREA)
    prob = cv2.resize(cv2.GaussianBlur(coarse, (3, 3), 0.8), (size, size), interpolation=cv2.INTER_LINEAR)
    return img, truth, prob


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_equals_an_independent_guided_filter():
    rng = np.random.RandomState(1)
    img = rng.randint(0, 255, (40, 48, 3)).astype(np.uint8)
    p = cv2.GaussianBlur(rng.rand(40, 48), (7, 7), 2)
    for r, eps in ((2, 1e-3), (4, 1e-2)):
        got = guided_refine(torch.from_numpy(p)[None].float(), torch.from_numpy(img).permute(2, 0, 1)[None],
                            GuidedRefine(r, eps), model_size=(40, 48))
        want = _reference_guided_filter(img, p, r, eps)
        np.testing.assert_allclose(got[0].numpy(), want, atol=2e-4)


def test_snaps_a_blurry_mask_to_the_image_edge():
    img, truth, prob = _square_scene()
    plain = prob > 0.5
    refined = guided_refine(torch.from_numpy(prob)[None], torch.from_numpy(img).permute(2, 0, 1)[None],
                            GuidedRefine(4, 1e-3), model_size=(64, 64))[0].numpy() > 0.5
    assert _iou(plain, truth) < 0.96
    assert _iou(refined, truth) > _iou(plain, truth) + 0.03 and _iou(refined, truth) > 0.99


def test_larger_output_uses_the_fast_filter_at_the_model_grid():
    img, truth, prob = _square_scene(64)
    big = cv2.resize(img, (256, 192), interpolation=cv2.INTER_NEAREST)  # 4x wide, 3x tall: squashed like the model
    big_prob = cv2.resize(prob, (256, 192), interpolation=cv2.INTER_LINEAR)
    big_truth = cv2.resize(truth.astype(np.uint8), (256, 192), interpolation=cv2.INTER_NEAREST) > 0
    out = guided_refine(torch.from_numpy(big_prob)[None], torch.from_numpy(big).permute(2, 0, 1)[None],
                        GuidedRefine(4, 1e-3), model_size=(64, 64))
    assert out.shape == (1, 192, 256) and out.dtype == torch.float32
    assert _iou(out[0].numpy() > 0.5, big_truth) > _iou(big_prob > 0.5, big_truth) + 0.03


def test_settings_and_errors():
    assert refine_from_config(InferenceConfig()) is None  # off unless a checkpoint says otherwise
    on = InferenceConfig(refine="guided", refine_radius=6, refine_eps=3e-4)
    assert refine_from_config(on) == GuidedRefine(6, 3e-4) and GuidedRefine(6, 3e-4).label() == "guided r=6 eps=0.0003"
    assert resolve_refine(on, False) is None and resolve_refine(InferenceConfig(), True) == GuidedRefine(8, 1e-3)
    assert resolve_refine(on, GuidedRefine(2, 0.1)) == GuidedRefine(2, 0.1)
    with pytest.raises(ValueError, match="unknown mask refinement"):
        refine_from_config(InferenceConfig(refine="crf"))
    with pytest.raises(ValueError, match="radius"):
        GuidedRefine(0, 1e-3)
    with pytest.raises(ValueError, match="eps"):
        GuidedRefine(4, 0.0)
    with pytest.raises(ValueError, match="refine must be"):
        resolve_refine(on, "guided")
    with pytest.raises(ValueError, match="same B, H, W"):
        guided_refine(torch.zeros(1, 8, 8), torch.zeros(1, 3, 8, 9), GuidedRefine(), (8, 8))
    logits = [torch.zeros(1, 4, 4)]
    with pytest.raises(ValueError, match="needs the image"):
        postprocess(logits, [None], (8, 8), refine=GuidedRefine())


def test_postprocess_refines_only_when_asked():
    img, truth, prob = _square_scene()
    logits = torch.logit(torch.from_numpy(cv2.resize(prob, (16, 16), interpolation=cv2.INTER_AREA)).clamp(1e-4, 1 - 1e-4))[None]
    guide = torch.from_numpy(img).permute(2, 0, 1)[None]
    plain = postprocess([logits], [None], (64, 64))
    same = postprocess([logits], [None], (64, 64), guidance=guide)  # guidance alone changes nothing
    assert torch.equal(plain.raw_masks, same.raw_masks)
    refined = postprocess([logits], [None], (64, 64), refine=GuidedRefine(4, 1e-3), guidance=guide, model_size=(64, 64))
    assert _iou(refined.raw_masks[0].numpy(), truth) > _iou(plain.raw_masks[0].numpy(), truth)


def test_predictor_refines_at_the_image_size(tiny):
    rng = np.random.RandomState(3)
    image = np.kron(rng.randint(0, 255, (6, 8, 3)).astype(np.uint8), np.ones((20, 20, 1), np.uint8))  # 120 x 160
    plain, refined = MABPPredictor(tiny), MABPPredictor(tiny, refine=GuidedRefine(3, 1e-3))
    assert plain.refine is None  # off by default
    for p in (plain, refined):
        p.set_image(image)
    a, b = plain.predict("the red circle"), refined.predict("the red circle")
    assert a.extras["refine"] == "none" and b.extras["refine"] == "guided r=3 eps=0.001"
    out = refined.outputs_for("the red circle")
    prob = F.interpolate(out["pred_masks"][-1].float().unsqueeze(1), size=(120, 160), mode="bilinear",
                         align_corners=False).squeeze(1).sigmoid()
    want = guided_refine(prob, torch.from_numpy(image).permute(2, 0, 1)[None], GuidedRefine(3, 1e-3),
                         (tiny.cfg.image_size, tiny.cfg.image_size))[0].numpy() > tiny.cfg.inference.threshold
    assert np.array_equal(b.raw_mask, want)
    assert np.array_equal(a.raw_mask, (prob[0] > tiny.cfg.inference.threshold).numpy())
    assert a.no_target == b.no_target and a.nt_probs == b.nt_probs  # the decision is not touched


def test_evaluate_and_calibrate_follow_the_setting(tiny, tmp_path, capsys):
    from train import calibrate
    from mabp.registry import save_checkpoint
    from train.data import build_dataset
    from train.evaluate import evaluate_model, format_report

    ds = build_dataset("synthgres", "val", mode="eval", size=96)
    plain = evaluate_model(tiny, ds, batch_size=4, progress=False, limit=8)
    assert plain["refine"] == "none" and plain["per_refine"] == {}
    on = evaluate_model(tiny, ds, batch_size=4, progress=False, limit=8, refine=GuidedRefine(2, 1e-3))
    assert on["refine"] == "guided r=2 eps=0.001" and set(on["per_refine"]) == {"none"}
    # The unrefined figures scored beside a refined run are the plain run's, from the same pass.
    assert on["per_refine"]["none"]["gIoU"] == pytest.approx(plain["metrics"]["gIoU"])
    assert [r["nt_prob"] for r in on["per_sample"]] == [r["nt_prob"] for r in plain["per_sample"]]
    assert "masks refined: guided r=2" in format_report(on, "synthgres", "val", paper=False)

    assert calibrate.refine_candidates(tiny.cfg.inference, None, None, None) is None
    assert calibrate.refine_candidates(tiny.cfg.inference, "none", None, None) == [False]
    assert calibrate.refine_candidates(tiny.cfg.inference, None, [2, 4], [1e-3]) == \
        [False, GuidedRefine(2, 1e-3), GuidedRefine(4, 1e-3)]
    with pytest.raises(ValueError):
        calibrate.refine_candidates(tiny.cfg.inference, "none", [2], None)

    src = save_checkpoint(tiny, tmp_path / "tiny.pt",
                          extra={"train_config": {"data": {"kwargs": {"world": "shapes"}}}})
    dst = tmp_path / "calibrated.pt"
    assert calibrate.main(["--checkpoint", str(src), "--samples", "8", "--grid", "0.3", "--refine-radii", "2", "3",
                           "--refine-eps", "1e-3", "--out", str(dst), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "mask refinement on the calibration set" in printed and "guided r=3 eps=0.001" in printed
    ckpt = load_checkpoint(dst)
    record = ckpt["nt_calibration"]
    assert set(record["refine_grid"]) == {"none", "guided r=2 eps=0.001", "guided r=3 eps=0.001"}
    best = max(record["refine_grid"].values(), key=lambda m: m["gIoU"])["gIoU"]
    assert record["refine_grid"][record["refine"]]["gIoU"] == best  # the stored choice is the best one
    inf = ckpt["config"]["inference"]
    model = build_mabp(checkpoint=ckpt)
    assert (inf["refine"] == "none") == (record["refine"] == "none")
    assert MABPPredictor(model).refine == refine_from_config(model.cfg.inference)
    # The stored setting is the evaluator's default; --refine none / refine=False turns it off.
    assert evaluate_model(model, ds, batch_size=4, progress=False, limit=4)["refine"] == record["refine"]
    assert evaluate_model(model, ds, batch_size=4, progress=False, limit=4, refine=False)["refine"] == "none"
    dst2 = tmp_path / "forced.pt"
    assert calibrate.main(["--checkpoint", str(src), "--samples", "4", "--grid", "0.3", "--refine", "none",
                           "--out", str(dst2), "--no-progress", "--threads", "1"]) == 0
    assert load_checkpoint(dst2)["config"]["inference"]["refine"] == "none"
    assert calibrate.main(["--checkpoint", str(src), "--refine", "none", "--refine-radii", "2",
                           "--no-progress"]) == 2
