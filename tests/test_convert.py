"""Weight conversion: the authors' MABP checkpoint and Microsoft's Swin release -> our checkpoints.

The official checkpoint is faked from the manifest of the official state dict (every key and shape,
seeded random values, the true relative_position_index), wrapped like detectron2 with some DDP prefixes.
The paper-sized round trip (write 0.9 GB, convert through the CLI, rebuild with build_mabp, compare all
1,005 tensors) runs once per module (~25 s of the file's ~35 s on the shared 2-core machine); the rest
works on shape-only dictionaries, tiny models laid out with the official names, and small files.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import pickle
import time
from pathlib import Path
from typing import Dict

import pytest
import torch

from mabp import build_mabp, load_checkpoint
from mabp.convert import (ConversionError, WeightsFileError, check_bert_folder, convert_swin_imagenet,
                          load_weights_file, map_official_state, map_swin_imagenet_state, model_layout,
                          ours_to_official, unwrap_state)
from mabp.official import official_to_ours
from mabp.registry import get_config
from mabp.modeling.swin import relative_position_index
from train.convert import main

MANIFEST = Path(__file__).resolve().parent / "data" / "mabp_official_state_dict.json"  # facts: keys, shapes
POOL_SIZE = 1_000_003  # prime: tensors cut from the pool at different offsets never coincide


pytestmark = pytest.mark.usefixtures("single_thread")


def _manifest() -> Dict[str, list]:
    return json.loads(MANIFEST.read_text())["state_dict"]


def _seeded_tensors(shapes: Dict[str, tuple], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Seeded random float tensors for every name (relative_position_index entries get the true index).

    Values are cut cyclically from one seeded N(0, 0.02) pool at running offsets: as discriminating as fully
    random tensors for a mapping test (no two same-shaped tensors are equal) but ~10x cheaper than drawing
    229 M normal samples.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL_SIZE, generator=gen) * 0.02
    out, offset = {}, 0
    for key, shape in shapes.items():
        shape = tuple(shape)
        if key.endswith("relative_position_index"):
            out[key] = relative_position_index(int(round(math.sqrt(shape[0]))))
            continue
        n = math.prod(shape)
        start = offset % POOL_SIZE
        if start + n <= POOL_SIZE:
            out[key] = pool[start:start + n].reshape(shape).clone()
        else:  # wrap around the pool (only the large tensors)
            out[key] = pool.repeat((start + n) // POOL_SIZE + 1)[start:start + n].reshape(shape).clone()
        offset += n
    return out


def _expected_from_manifest(manifest: Dict[str, list]) -> Dict[str, tuple]:
    return {official_to_ours(k): tuple(v) for k, v in manifest.items()}


def _shape_only(manifest: Dict[str, list], fill: float = 0.0) -> Dict[str, torch.Tensor]:
    """Every manifest entry as an expanded scalar (right shape, no memory) + the true index buffers."""
    return {k: relative_position_index(int(round(math.sqrt(s[0])))) if k.endswith("relative_position_index")
            else torch.tensor(fill).expand(tuple(s)) for k, s in manifest.items()}


def _detectron2_wrap(state: Dict[str, torch.Tensor]) -> dict:
    """{"model": sd, "iteration": 1} with "module." on every 5th key and the old transformers buffer."""
    model = {("module." + k if i % 5 == 0 else k): v for i, (k, v) in enumerate(state.items())}
    model["text_encoder.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    return {"model": model, "iteration": 1}


def test_every_official_entry_maps_onto_paper_in_memory():
    """The whole official state dict (1,005 entries, detectron2-wrapped) maps 1:1, nothing missing."""
    manifest = _manifest()
    state = _shape_only(manifest)
    unwrapped, meta = unwrap_state(_detectron2_wrap(state))
    assert meta == {"iteration": 1} and len(unwrapped) == 1006
    mapped, report = map_official_state(unwrapped, _expected_from_manifest(manifest))
    report.raise_if_invalid()
    assert report.counts()["loaded"] == 1005 and report.missing == [] and report.unexpected == []
    assert report.ignored == [("text_encoder.embeddings.position_ids",
                               "non-persistent buffer of transformers (re-created)")]
    assert report.index_checked == 24 and report.model_parameters == 229_119_176
    assert all(mapped[official_to_ours(k)] is v for k, v in state.items())


def test_cli_converts_an_official_layout_checkpoint_end_to_end(tmp_path, capsys):
    """The CLI path (read, map, write, provenance, fp16) on a tiny model that carries the official names."""
    layout = model_layout(get_config("tiny"))
    ours = _seeded_tensors({k: s for k, (s, _) in layout.items()}, seed=7)
    official = {ours_to_official(k): v for k, v in ours.items()}
    src = tmp_path / "tiny_official.pth"
    torch.save(_detectron2_wrap(official), src)
    dst = tmp_path / "tiny.pt"
    assert main(["--from", "official-mabp", str(src), "--to", str(dst), "--preset", "tiny", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert f"{len(layout)} entries loaded into the tiny model" in report and "missing     0" in report
    rebuilt = build_mabp(checkpoint=dst).state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in ours.items())
    prov = load_checkpoint(dst)["converted_from"]
    assert prov["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and prov["counts"]["missing"] == 0
    half = tmp_path / "tiny-half.pt"
    assert main(["--from", "official-mabp", str(src), "--to", str(half), "--preset", "tiny", "--half",
                 "--quiet"]) == 0
    assert load_checkpoint(half)["model"]["backbone.patch_embed.proj.weight"].dtype == torch.float16
    restored = build_mabp(checkpoint=half).state_dict()
    assert torch.allclose(restored["decoder.query_embed.weight"], ours["decoder.query_embed.weight"], atol=1e-3)


# ----------------------------------------------------------------------------------------- paper round trip
@pytest.fixture(scope="module")
def official_fake(tmp_path_factory):
    """(path of a detectron2-style fake official checkpoint, its unwrapped state by official name)."""
    manifest = _manifest()
    state = _seeded_tensors(manifest)
    path = tmp_path_factory.mktemp("official") / "MABP_best.pth"
    torch.save(_detectron2_wrap(state), path)
    return path, state


@pytest.fixture(scope="module")
def converted(official_fake, tmp_path_factory):
    """Run the CLI once on the fake official checkpoint: (output path, printed report, exit code, seconds)."""
    src, _ = official_fake
    dst = tmp_path_factory.mktemp("converted") / "mabp-paper.pt"
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["--from", "official-mabp", str(src), "--to", str(dst), "--quiet"])
    return dst, out.getvalue(), code, time.perf_counter() - t0


def test_cli_converts_every_official_entry_and_reports_it(converted, official_fake):
    dst, report, code, seconds = converted
    assert code == 0, report
    print(f"\nconversion of the fake paper checkpoint: {seconds:.1f} s, {dst.stat().st_size / 1e9:.2f} GB")
    assert "1005 entries loaded into the paper model (1005 entries, 229,119,176 parameters)" in report
    assert "missing     0" in report and "unexpected  0" in report
    assert "text_encoder.embeddings.position_ids" in report  # ignored, with its reason
    assert "24 relative_position_index buffers equal the recomputed Swin index" in report
    assert "res_gate: NOT all zero" in report  # the fake gates are random
    ckpt = load_checkpoint(dst)
    prov = ckpt["converted_from"]
    assert prov["file"] == "MABP_best.pth" and prov["counts"]["loaded"] == 1005
    assert prov["counts"]["missing"] == prov["counts"]["unexpected"] == 0 and prov["counts"]["ignored"] == 1
    assert prov["sha256"] == hashlib.sha256(official_fake[0].read_bytes()).hexdigest()
    assert prov["source_meta"] == {"iteration": 1} and prov["gates_all_zero"] is False
    assert ckpt["config"] == get_config("paper").to_dict()


def test_converted_checkpoint_rebuilds_paper_with_every_tensor_equal(converted, official_fake):
    dst, _, code, _ = converted
    assert code == 0
    _, state = official_fake
    model = build_mabp(checkpoint=dst)
    ours = model.state_dict()
    assert len(ours) == len(state) == 1005
    different = [k for k, v in state.items() if not torch.equal(ours[official_to_ours(k)], v)]
    assert not different, different[:5]


# ----------------------------------------------------------------------------------------- official: failures
def test_wrong_shape_or_missing_entry_fails_naming_it():
    manifest = _manifest()
    expected = _expected_from_manifest(manifest)
    small = _shape_only(manifest)
    key = "sem_seg_head.predictor.decoder_norm.2.weight"
    bad_shape = dict(small, **{key: torch.zeros(255)})
    _, report = map_official_state(bad_shape, expected)
    with pytest.raises(ConversionError, match=r"decoder\.heads\.2\.norm\.weight \(official: "
                                              r"sem_seg_head\.predictor\.decoder_norm\.2\.weight\): "
                                              r"checkpoint \(255\) vs model \(256\)"):
        report.raise_if_invalid()
    assert report.missing == []  # reported once, as a mismatch

    missing = {k: v for k, v in small.items() if k != "backbone.layers.2.blocks.7.mlp.fc1.bias"}
    _, report = map_official_state(missing, expected)
    with pytest.raises(ConversionError, match=r"1 entry missing.*backbone\.layers\.2\.blocks\.7\.mlp\.fc1\.bias"):
        report.raise_if_invalid()

    extra = dict(small, **{"sem_seg_head.predictor.class_embed.weight": torch.zeros(2, 256)})
    _, report = map_official_state(extra, expected)
    with pytest.raises(ConversionError, match=r"unexpected.*class_embed.*--allow-unexpected"):
        report.raise_if_invalid()
    _, report = map_official_state(extra, expected, allow_unexpected=True)
    report.raise_if_invalid()  # allowed: listed, not fatal
    assert report.unexpected == ["sem_seg_head.predictor.class_embed.weight"]

    rpi_key = "backbone.layers.1.blocks.1.attn.relative_position_index"
    shuffled = dict(small, **{rpi_key: small[rpi_key].flip(0)})
    _, report = map_official_state(shuffled, expected)
    with pytest.raises(ConversionError, match=r"relative_position_index.*differ.*window 12"):
        report.raise_if_invalid()


def test_closed_gates_are_reported_as_closed():
    manifest = _manifest()
    expected = _expected_from_manifest(manifest)
    state = _shape_only(manifest, fill=1.0)
    for key in state:
        if ".res_gate." in key:
            state[key] = torch.zeros(state[key].shape)
    _, report = map_official_state(state, expected)
    report.raise_if_invalid()
    assert report.gates_all_zero is True and report.gates_closed is True
    assert "all 6 matrices are exactly zero -> closed" in report.format()
    # One zero matrix per stage is enough to keep that stage closed.
    state["backbone.layers.0.res_gate.0.weight"] = torch.ones(state["backbone.layers.0.res_gate.0.weight"].shape)
    _, report = map_official_state(state, expected)
    assert report.gates_all_zero is False and report.gates_closed is True


def test_reverse_names_invert_the_official_map():
    manifest = _manifest()
    assert all(ours_to_official(official_to_ours(k)) == k for k in manifest)


def test_cli_refuses_an_incomplete_checkpoint_and_writes_nothing(tmp_path, capsys):
    manifest = _manifest()
    keep = list(manifest)[:3]
    src = tmp_path / "partial.pth"
    torch.save({k: torch.zeros(tuple(manifest[k])) for k in keep}, src)  # a bare state dict is accepted too
    dst = tmp_path / "out.pt"
    assert main(["--from", "official-mabp", str(src), "--to", str(dst), "--quiet"]) == 2
    assert not dst.exists()
    err = capsys.readouterr().err
    assert "1002 entries missing" in err and "nothing was written" in err


def test_model_layout_matches_the_manifest_without_materialising():
    manifest = _manifest()
    layout = model_layout(get_config("paper"))
    assert {k: s for k, (s, _) in layout.items()} == _expected_from_manifest(manifest)
    assert isinstance(torch.nn.Linear(2, 2).weight.device, torch.device)  # the meta patch was undone
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


# ----------------------------------------------------------------------------------------- unreadable files
class _Marker:
    """Unpickling this (with weights_only=False) would create a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_unsafe_or_broken_files_give_clear_errors(tmp_path):
    with pytest.raises(WeightsFileError, match="not found"):
        load_weights_file(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFileError, match="empty"):
        load_weights_file(empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404 not found</html>" * 4)
    with pytest.raises(WeightsFileError, match="not a PyTorch checkpoint"):
        load_weights_file(garbage)
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(WeightsFileError, match="truncated or corrupted"):
        load_weights_file(truncated)
    pkl = tmp_path / "swin_base_patch4_window12_384_22k.pkl"
    with open(pkl, "wb") as f:  # what ReLA's convert-pretrained-swin-model-to-d2.py writes (numpy arrays)
        pickle.dump({"model": {"patch_embed.proj.bias": [0.0] * 4}, "__author__": "third_party"}, f)
    with pytest.raises(WeightsFileError, match=r"plain Python pickle.*original \.pth.*swin_base_patch4"):
        load_weights_file(pkl)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "hook": _Marker(marker), "args": argparse.Namespace(lr=1)}, evil)
    with pytest.raises(WeightsFileError, match=r"pickled Python object .*refused"):
        load_weights_file(evil)
    assert not marker.exists()
    # The backbone loader of visual.weights goes through the same safe reader.
    model = build_mabp("tiny")
    with pytest.raises(WeightsFileError, match="refused"):
        model.backbone.load_swin_weights(str(evil))
    assert not marker.exists()
    assert main(["--from", "swin-imagenet", str(pkl), "--to", str(tmp_path / "o.pt"), "--quiet"]) == 2
    with pytest.raises(ConversionError, match="not tensors"):
        unwrap_state({"model": {"w": torch.ones(1), "step": 3}})


# ----------------------------------------------------------------------------------------- swin-imagenet
def _fake_microsoft_swin(preset: str = "tiny", seed: int = 1) -> Dict[str, torch.Tensor]:
    """A Microsoft-layout Swin state dict for the preset's backbone: its Swin entries (no `backbone.`
    prefix), true relative_position_index buffers, attn_mask buffers of shifted blocks, final norm, head."""
    layout = model_layout(get_config(preset))
    shapes = {k[len("backbone."):]: s for k, (s, _) in layout.items()
              if k.startswith("backbone.") and ".fusion." not in k and ".res_gate." not in k
              and not k.startswith("backbone.norm")}
    state = _seeded_tensors(shapes, seed)
    cfg = get_config(preset).visual
    n = cfg.window_size ** 2
    last = cfg.embed_dim * 8
    for key in [k for k in shapes if k.endswith("blocks.1.attn.relative_position_index")]:
        state[key.replace("attn.relative_position_index", "attn_mask")] = torch.zeros(4, n, n)
    state.update({"norm.weight": torch.ones(last), "norm.bias": torch.zeros(last),
                  "head.weight": torch.zeros(10, last), "head.bias": torch.zeros(10)})
    return state


def test_swin_imagenet_fills_the_backbone_and_reports_fresh_parts(tmp_path, capsys):
    state = _fake_microsoft_swin()
    src = tmp_path / "swin_tiny_fake.pth"
    torch.save({"model": state}, src)
    dst = tmp_path / "init.pt"
    assert main(["--from", "swin-imagenet", str(src), "--to", str(dst), "--preset", "tiny", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "missing     0" in report and "unexpected  0" in report
    assert "ImageNet classification head" in report and "final norm of the classifier" in report
    assert "shifted-window mask buffer" in report
    for part in ("backbone PWAM fusion", "backbone residual gates", "backbone output norms", "pixel decoder",
                 "decoder", "text encoder (BERT)"):
        assert part in report
    assert "RANDOM BERT" in report and "zero-initialised (closed)" in report
    model = build_mabp(checkpoint=dst)
    ours = model.state_dict()
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith(("attn_mask", "relative_position_index")):
            continue
        assert torch.equal(ours["backbone." + key], value), key
    assert model.visual_cacheable()  # fresh gates are closed
    # visual.weights at build time reads the same file (weights_only) into the backbone.
    direct = build_mabp("tiny", visual__weights=str(src)).state_dict()
    assert torch.equal(direct["backbone.layers.2.blocks.1.attn.qkv.weight"], state["layers.2.blocks.1.attn.qkv.weight"])


def test_swin_imagenet_other_window_resizes_bias_tables(tmp_path):
    state = _fake_microsoft_swin()
    # Give one table a constant per head: a bicubic resize must keep constants (its weights sum to 1).
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    state[key] = torch.tensor([0.5]).expand_as(state[key]).clone()
    src = tmp_path / "swin_w3.pth"
    torch.save({"model": state}, src)
    report = convert_swin_imagenet(src, tmp_path / "w5.pt", preset="tiny", window=5, progress=False,
                                   log=lambda m: None)
    assert report.source_window == 3 and report.window == 5
    assert len(report.interpolated) == 5  # one table per block of the tiny Swin (1+1+2+1)
    assert any("index for window 3 (recomputed for window 5)" in r for _, r in report.ignored)
    ours = build_mabp(checkpoint=tmp_path / "w5.pt").state_dict()
    resized = ours["backbone." + key]
    assert resized.shape == (81, 1)
    assert torch.allclose(resized, torch.full_like(resized, 0.5), atol=1e-6)
    other = ours["backbone.layers.2.blocks.1.attn.relative_position_bias_table"]
    source = state["layers.2.blocks.1.attn.relative_position_bias_table"]
    assert other.shape == (81, 2) and torch.isfinite(other).all()
    span = (source.max() - source.min()).item()
    assert other.min() >= source.min() - 0.5 * span and other.max() <= source.max() + 0.5 * span
    assert torch.equal(ours["backbone.layers.0.blocks.0.attn.relative_position_index"], relative_position_index(5))


def test_swin_wrong_variant_or_multimodal_file_is_refused():
    layout = model_layout(get_config("tiny"))
    expected = {k: s for k, (s, _) in layout.items()}
    state = _fake_microsoft_swin()
    state["patch_embed.proj.weight"] = torch.zeros(24, 3, 4, 4)
    _, report = map_swin_imagenet_state(state, expected, window_size=3)
    with pytest.raises(ConversionError, match=r"patch_embed\.proj\.weight: checkpoint \(24, 3, 4, 4\) vs model"):
        report.raise_if_invalid()
    assert any("embed_dim 24" in n for n in report.notes)
    del state["layers.3.blocks.0.mlp.fc2.bias"]
    _, report = map_swin_imagenet_state(state, expected, window_size=3)
    assert "backbone.layers.3.blocks.0.mlp.fc2.bias" in report.missing
    _, report = map_swin_imagenet_state({"sem_seg_head.pixel_decoder.x": torch.zeros(1)}, expected, window_size=3)
    with pytest.raises(ConversionError, match=r"unexpected(.|\n)*hint: .*--from official-mabp"):
        report.raise_if_invalid()
    # ... and the other way round: an ImageNet Swin given as the official MABP checkpoint.
    _, report = map_official_state(_fake_microsoft_swin(), expected)
    with pytest.raises(ConversionError, match=r"hint: .*--from swin-imagenet"):
        report.raise_if_invalid()


def test_bert_folder_is_loaded_strictly_or_refused(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = get_config("tiny")
    bert_dir = tmp_path / "bert"
    torch.manual_seed(3)
    bert = BertModel(BertConfig(vocab_size=cfg.text.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64),
                     add_pooling_layer=False)
    bert.save_pretrained(bert_dir)
    src = tmp_path / "swin.pth"
    torch.save({"model": _fake_microsoft_swin()}, src)
    report = convert_swin_imagenet(src, tmp_path / "init.pt", preset="tiny", bert=bert_dir, progress=False,
                                   log=lambda m: None)
    assert "BERT loaded from" in report.text_encoder
    assert not any(k.startswith("text_encoder.") for k in report.fresh)
    ckpt = load_checkpoint(tmp_path / "init.pt")
    assert ckpt["config"]["text"]["path"] == str(bert_dir.resolve())
    word = ckpt["model"]["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(word, bert.embeddings.word_embeddings.weight.detach())
    with pytest.raises(ConversionError, match=r"not a BERT-base model for the paper preset: .*hidden_size 32 "
                                              r"\(needs 768\)"):
        check_bert_folder(bert_dir, get_config("paper"))
    with pytest.raises(ConversionError, match="not a folder"):
        check_bert_folder(tmp_path / "missing", get_config("paper"))


def test_official_style_training_never_opens_the_zero_gates():
    """The fact the converter reports: zero-initialised tanh(W2 relu(W1 x)) gates get exactly zero gradient,
    so AdamW (with weight decay and clipping, as the official recipe) leaves them at zero."""
    from mabp.criterion import MABPCriterion
    from mabp.tokenizer import TextTokenizer

    model = build_mabp("tiny")
    gates = {n: p for n, p in model.named_parameters() if ".res_gate." in n}
    assert len(gates) == 6 and all(not p.any() for p in gates.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    crit = MABPCriterion(model.cfg.loss)
    t = TextTokenizer(model.cfg.text)(["the red square", "nothing"])
    images, gts = torch.rand(2, 3, 96, 96) * 255, torch.zeros(2, 96, 96)
    gts[0, 10:40, 10:40] = 1
    before = model.backbone.layers[0].fusion.vis_project[0].weight.detach().clone()
    for _ in range(2):
        loss = crit(model(images, t.input_ids, t.attention_mask), gts, torch.tensor([False, True]))["loss"]
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or not p.grad.any() for p in gates.values())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
    assert all(not p.any() for p in gates.values()) and model.visual_cacheable()
    assert not torch.equal(before, model.backbone.layers[0].fusion.vis_project[0].weight)  # PWAM did train
