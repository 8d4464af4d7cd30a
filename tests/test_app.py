"""The Gradio app with a tiny model: it builds, every callback works on real files and arrays, bad
input gives clear messages (never an exception out of a UI callback), the service is thread-safe,
app.py starts from a checkpoint (or falls back loudly), and a real gradio_client round trip works."""
import importlib.util
import sys
import threading
import time

import cv2
import gradio as gr
import numpy as np
import pytest

from app import ui
from mabp.image_files import decode_image_bytes, load_image
from app.service import UNTRAINED_NOTICE, ModelThread, SegmentService, load_model
from app.ui import DemoCallbacks, SafeImage, Session, create_app
from mabp.image_io import InputError
from tests.app_helpers import ROOT, SCENE, force_no_target, running, tiny_predictor, write_inputs

# gr.Warning outside a request falls back to warnings.warn: expected here, the tests read the banners
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


@pytest.fixture(scope="module")
def demo():
    return create_app(tiny_predictor(), notice=UNTRAINED_NOTICE)


@pytest.fixture(scope="module")
def cb(demo) -> DemoCallbacks:
    return demo.mabp_callbacks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def _is_error(outputs) -> bool:
    return "mabp-error" in outputs[1]


def _img(path):
    """Pictures leave the callbacks as unique PNG files (app/outputs.py): read one back as RGB."""
    assert isinstance(path, str), path
    arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


# ------------------------------------------------------------------------------------------ build
def test_ui_builds_with_lean_api_and_notice(demo):
    assert isinstance(demo, gr.Blocks)
    api = demo.get_api_info()
    assert set(api["named_endpoints"]) == {"/segment"}  # UI events are private: the API stays lean
    params = [p["parameter_name"] for p in api["named_endpoints"]["/segment"]["parameters"]]
    assert params == ["image", "text", "threshold"]
    cfg = demo.get_config_file()
    html = [c.get("props", {}).get("value") for c in cfg["components"] if c.get("type") == "html"]
    assert any(UNTRAINED_NOTICE in (v or "") for v in html)
    rows, labels, chips = ui.load_examples()
    assert len(rows) >= 10 and all((ROOT / "assets" / "examples").joinpath(r[0]).is_file() for r in rows)
    assert any("scene.png" in r[0] for r in rows)
    # real photos stay out of the gallery until a checkpoint trained on the photo world ships
    assert not any(name in r[0] for r in rows for name in ("astronaut", "coffee", "chelsea"))
    assert all(r[2] == "no target" or r[2].startswith("target: ") for r in rows)  # expected answer shown
    assert ["target: small red circle"] == [r[2] for r in rows if r[1] == "the red circle"]
    assert chips["scene.png"][0] == "the red circle" and len(chips["scene.png"]) >= 3


def test_api_page_documents_segment_with_a_working_example(demo):
    ep = demo.get_api_info()["named_endpoints"]["/segment"]
    assert "mask as a PNG" in ep["description"] and "no_target" in ep["description"]
    image, text, threshold = ep["parameters"]
    assert "image file to segment" in image["python_type"]["description"]
    assert "FileData" not in image["python_type"]["description"]  # not Gradio's internal docstring
    assert image["example_input"]["url"] == "assets/examples/scene.png" and (ROOT / image["example_input"]["url"]).is_file()
    assert text["example_input"] == "the red circle" and "20 tokens" in text["python_type"]["description"]
    assert threshold["example_input"] == 0.5 and "between 0" in threshold["python_type"]["description"]


def test_example_images_are_small_and_licensed():
    folder = ROOT / "assets" / "examples"
    for p in folder.iterdir():
        if p.suffix in (".png", ".jpg"):
            assert p.stat().st_size <= 300 * 1024, p
    lic = (folder / "LICENSES.md").read_text()
    for name in ("astronaut", "coffee", "chelsea", "public domain", "CC0"):
        assert name in lic


# -------------------------------------------------------------------------------------- segment
def test_segment_outputs_at_original_resolution(cb, files):
    out = cb.segment(str(files["rgb"]), "the red circle", 0.5, "any", "segmentation", None)
    session, banner, overlay, tiles, latency, trunc, mask_dl, overlay_dl = out
    assert isinstance(session, Session) and session.result is not None and session.info is None  # lazy
    assert _img(overlay).shape == (120, 90, 3)
    # downloads: the binary mask at the original size, and the overlay
    mask = cv2.imread(mask_dl.value if isinstance(mask_dl.value, str) else mask_dl.value["path"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (120, 90) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 0, session.result.mask)
    assert _img(overlay_dl.value if isinstance(overlay_dl.value, str) else overlay_dl.value["path"]).shape == (120, 90, 3)
    assert len(tiles) == 4 and all(_img(t[0]).ndim == 3 for t in tiles)
    assert ("No target" in banner) == session.result.no_target
    assert "model time" in latency and trunc == ""
    # a new threshold on the same text re-uses the model outputs
    again = cb.segment(str(files["rgb"]), "the red circle", 0.3, "any", "segmentation", session)
    assert again[0].result.extras["cached"] and "cached" in again[4]


def test_forced_no_target_banner_and_overlay_banner(files):
    pred = tiny_predictor()
    cbx = DemoCallbacks(SegmentService(pred))
    force_no_target(pred.model, True)
    out = cbx.segment(str(files["rgb"]), "a purple elephant", 0.5, "any", "segmentation", None)
    assert "No target" in out[1] and not out[0].result.mask.any()
    force_no_target(pred.model, False)
    out = cbx.segment(str(files["rgb"]), "everything", 0.01, "any", "segmentation", None)
    assert "Target found" in out[1] and out[0].result.mask.any()
    assert not np.array_equal(_img(out[2]), _img(str(files["rgb"])))


def test_long_expression_is_truncated_with_a_note(cb, files):
    text = " ".join(["the big red circle next to the small blue square"] * 50)  # 500 words
    out = cb.segment(str(files["rgb"]), text, 0.5, "any", "segmentation", None)
    assert not _is_error(out)
    assert out[0].result.truncated and "truncated" in out[5] and "`the big red circle" in out[5]


# ------------------------------------------------------------------------------------------ tabs
@pytest.fixture(scope="module")
def seeded(cb, files):
    return cb.segment(str(files["rgb"]), "the red circle", 0.5, "any", "segmentation", None)[0]


def test_segmentation_tab_draws_nothing_extra(cb, files, seeded):
    outs = cb.render_tab(str(files["rgb"]), "segmentation", seeded, 1, 0, 0, 4, None)
    assert len(outs) == 15 and all(o == gr.skip() for o in outs)


def _with_strip(path) -> bool:
    """An analysis picture: the (120, 90) image with its legend or colour bar stacked under it."""
    img = _img(path)
    return img.ndim == 3 and img.shape[1] == 90 and img.shape[0] > 120


def test_each_tab_renders_on_real_arrays(cb, files, seeded):
    img = str(files["rgb"])
    reg = cb.render_tab(img, "regions", seeded, 1, 0, 0, 4, None)
    session = reg[0]
    assert session.info is not None  # introspection computed on first look
    assert _with_strip(reg[2]) and _with_strip(reg[3]) and "8x8" in reg[4]
    assert all(o == gr.skip() for o in reg[5:])  # other tabs untouched
    for s in range(4):
        r = cb.render_tab(img, "regions", session, s, 0, 0, 4, None)
        assert _with_strip(r[2])
    att = cb.render_tab(img, "attention", session, 1, 0, 4, 4, None)
    assert _with_strip(att[5]) and _img(att[6]).ndim == 3 and "Decoder layer 4" in att[7]
    assert all(o == gr.skip() for o in att[1:5] + att[8:])
    pro = cb.render_tab(img, "prototypes", session, 1, 0, 0, 3, None)
    assert _with_strip(pro[8]) and _img(pro[9]).ndim == 3
    assert "k = 3" in pro[10] and "silhouette" in pro[10]
    assert 3 in session.clusters  # KMeans cached per k
    lang = cb.render_tab(img, "language", session, 1, 0, 0, 4, "2")
    assert _img(lang[12]).ndim == 3 and _with_strip(lang[13]) and "'red'" in lang[14]


def test_tab_before_any_prediction_explains(cb, files):
    outs = cb.render_tab(str(files["rgb"]), "attention", None, 1, 0, 0, 4, None)
    assert "Segment an expression first" in outs[7]


def test_region_selection_by_slider_and_click(cb, files, seeded):
    img = str(files["rgb"])
    session = cb.render_tab(img, "regions", seeded, 1, 0, 0, 4, None)[0]
    out = cb.select_region(img, "regions", session, 1, 63, 0, 4, None)  # last 8x8 region
    assert "Selected region 63" in out[4] and out[1].value == 63 and out[1].maximum == 63
    evt = gr.SelectData(None, {"index": [2, 2], "value": None})  # top-left corner, display pixels
    out = cb.click_image(img, "regions", session, 1, 63, 0, 4, None, evt)
    from app.render import region_at

    expect = region_at(session.info.scales[1].boxes, 2.0, 2.0)  # tiny's 6x6 map pads its 8x8 windows
    assert f"Selected region {expect} " in out[4] and session.point == (2.0, 2.0)


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kind,needle", [
    ("none", "No image"), ("corrupted", "corrupted"), ("truncated", "corrupted"), ("not_image", "not an image"),
    ("empty", "empty"), ("huge", "too large"),
])
def test_bad_images_give_clear_messages(cb, files, kind, needle):
    image = None if kind == "none" else str(files[kind])
    t0 = time.perf_counter()
    out = cb.segment(image, "the red circle", 0.5, "any", "segmentation", None)
    assert _is_error(out) and needle in out[1], out[1]
    assert out[2] is None and out[3] == [] and len(out) == 8
    assert time.perf_counter() - t0 < 20  # refused from the header: 144 MP is never decoded
    with pytest.raises(gr.Error) as exc:
        cb.api_segment(image, "the red circle", 0.5)
    assert needle in exc.value.message


@pytest.mark.parametrize("text,needle", [(None, "No expression"), ("", "empty"), ("   \n\t ", "empty"),
                                         ("\u200b\u200d", "empty"), ("x" * 20_000, "too long")])
def test_bad_texts_give_clear_messages(cb, files, text, needle):
    out = cb.segment(str(files["rgb"]), text, 0.5, "any", "segmentation", None)
    assert _is_error(out) and needle in out[1]
    with pytest.raises(gr.Error, match=needle):
        cb.api_segment(str(files["rgb"]), text, 0.5)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 7, float("nan"), "abc"])
def test_bad_threshold_is_an_error_not_a_crash(cb, files, threshold):
    out = cb.segment(str(files["rgb"]), "the cat", threshold, "any", "segmentation", None)
    assert _is_error(out) and "threshold" in out[1]
    with pytest.raises(gr.Error, match="threshold"):
        cb.api_segment(str(files["rgb"]), "the cat", threshold)


def test_bad_rule_is_an_error(cb, files):
    out = cb.segment(str(files["rgb"]), "the cat", 0.5, "sometimes", "segmentation", None)
    assert _is_error(out) and "rule" in out[1]


@pytest.mark.parametrize("kind,note", [("gray", "grayscale"), ("rgba", "composited over white"),
                                       ("png16", "16-bit"), ("gray16", "16-bit")])
def test_awkward_but_valid_images_are_accepted_with_a_note(cb, files, kind, note):
    out = cb.segment(str(files[kind]), "the red circle", 0.5, "any", "segmentation", None)
    assert not _is_error(out) and _img(out[2]).shape == (120, 90, 3)
    assert note in out[4]
    mask, info = cb.api_segment(str(files[kind]), "the red circle", 0.5)
    assert _img(mask).shape == (120, 90) and _img(mask).dtype == np.uint8


def test_decoding_matches_the_pixels(files):
    ref = cv2.cvtColor(cv2.imread(str(files["rgb"])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(load_image(str(files["rgb"])), ref)
    assert np.array_equal(load_image(str(files["png16"])), ref)  # 16-bit -> >> 8 gives the 8-bit pixels back
    gray = load_image(str(files["gray"]))
    assert np.array_equal(gray[:, :, 0], ref[:, :, 0]) and np.array_equal(gray[:, :, 2], ref[:, :, 0])
    rgba = load_image(str(files["rgba"]))  # alpha 128 over white
    expect = np.round(ref * (128 / 255) + 255 * (1 - 128 / 255)).astype(np.uint8)
    assert np.abs(rgba.astype(int) - expect).max() <= 1
    with pytest.raises(InputError, match="not an image"):
        decode_image_bytes(b"GIF89a-not-really")


def test_safe_image_turns_unreadable_uploads_into_gr_error(files):
    from gradio.data_classes import ImageData

    comp = SafeImage(type="filepath", image_mode=None, render=False)
    # an unreadable upload goes on as its path: the callback refuses it in the lasting banner
    for kind in ("not_image", "empty", "corrupted"):
        assert comp.preprocess(ImageData(path=str(files[kind]), orig_name="x.png")) == str(files[kind])
    ok = comp.preprocess(ImageData(path=str(files["rgb"]), orig_name="rgb.png"))
    assert ok == str(files["rgb"])
    # 12000 x 12000 passes the header-only open (the callback refuses it); far larger trips Pillow's bomb check
    assert comp.preprocess(ImageData(path=str(files["huge"]), orig_name="huge.png")) == str(files["huge"])
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        assert comp.preprocess(ImageData(path=str(files["rgb"]), orig_name="rgb.png")) == str(files["rgb"])
        with pytest.raises(gr.Error, match="not an image"):  # no file to hand on: refused here
            comp.preprocess(ImageData(path=None, url="data:image/png;base64,iVBORw0KGgo=", orig_name="x.png"))
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_ui_callbacks_never_raise_on_internal_errors(files, monkeypatch):
    cbx = DemoCallbacks(SegmentService(tiny_predictor()))
    monkeypatch.setattr(cbx.service, "predict", lambda *a, **k: 1 / 0)
    out = cbx.segment(str(files["rgb"]), "the cat", 0.5, "any", "segmentation", None)
    assert _is_error(out) and "Internal error (ZeroDivisionError)" in out[1]
    with pytest.raises(gr.Error, match="Internal error"):
        cbx.api_segment(str(files["rgb"]), "the cat", 0.5)


# ------------------------------------------------------------------------------ scenes, prepare
def test_new_scene_and_suggestions(cb):
    if cb.random_scene is None:
        pytest.skip("SynthGRES is not importable here")
    out = cb.new_scene(7)
    image, dataset, text, session, banner = out
    assert _img(image).shape == (320, 320, 3) and text == "" and "Random scene #7 (shapes world)" in banner
    assert session.label.startswith("Random scene #7")
    samples = dataset.constructor_args["samples"] if hasattr(dataset, "constructor_args") else dataset.samples
    assert len(samples) >= 1 and all(isinstance(s[0], str) and s[0] for s in samples)
    assert cb.pick_suggestion(samples[0]) == samples[0][0]
    assert np.array_equal(_img(cb.new_scene(7)[0]), _img(image))  # a seed is reproducible
    # seed 0: a new scene on every click (the seed box is not an output, so it stays 0), seed in the banner
    a, b = cb.new_scene(0), cb.new_scene(0)
    assert a[4] != b[4] and not np.array_equal(_img(a[0]), _img(b[0]))
    ready = cb.prepare_image(a[0], a[3])
    assert a[3].label in ready[1] and "Image ready" in ready[1]


def test_prepare_image_encodes_once(cb, files):
    out = cb.prepare_image(str(files["rgb"]), None)
    assert "Image ready (90x120" in out[1]
    assert "mabp-error" in cb.prepare_image(str(files["corrupted"]), None)[1]
    assert cb.prepare_image(None, None)[2] is None


# ---------------------------------------------------------------------------------- service
def test_service_is_thread_safe_across_images():
    service = SegmentService(tiny_predictor(), max_images=2)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, (64 + 8 * i, 80, 3)).astype(np.uint8) for i in range(3)]
    keys = [service.load(im) for im in images]
    texts = ["the red circle", "all squares", "the left star"]
    expected = {(i, t): service.predict(*keys[i], t).raw_mask for i in range(3) for t in texts}
    errors, results = [], {}

    def work(i, t):
        try:
            results[(i, t)] = service.predict(*keys[i], t, introspect=(i == 1)).raw_mask
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, t)) for i in range(3) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for k, v in expected.items():
        assert np.array_equal(results[k], v), k
    assert len(service._pool) <= 2  # LRU bound on encoded images


# ------------------------------------------------------------------------------ start / app.py
def test_load_model_fallback_and_explicit_checkpoint(tmp_path, monkeypatch):
    from app import service as svc
    from mabp.registry import save_checkpoint

    monkeypatch.setattr(svc, "DEFAULT_CHECKPOINT", tmp_path / "missing.pt")
    loaded = load_model(None, fallback_preset="tiny", env={})
    assert not loaded.trained and loaded.notice == UNTRAINED_NOTICE and "untrained" in loaded.source
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(str(tmp_path / "nope.pt"), env={})
    ckpt = save_checkpoint(tiny_predictor().model, tmp_path / "tiny.pt")
    loaded = load_model(None, env={"MABP_CHECKPOINT": str(ckpt)})
    assert loaded.trained and loaded.notice is None and loaded.predictor.cfg.preset == "tiny"
    # warmed up on a blank image (first-call costs paid at start), and left with no image set
    assert not loaded.predictor.has_image and not loaded.predictor._outputs


def test_app_py_builds_the_model_at_import_from_the_environment(tmp_path, monkeypatch):
    from mabp.registry import save_checkpoint

    ckpt = save_checkpoint(tiny_predictor().model, tmp_path / "tiny.pt")
    monkeypatch.setenv("MABP_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    spec = importlib.util.spec_from_file_location("mabp_app_entry", ROOT / "app.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mabp_app_entry", mod)
    spec.loader.exec_module(mod)  # not __main__: builds the model and the Blocks, does not launch
    assert mod.LOADED.trained and isinstance(mod.demo, gr.Blocks)
    assert mod.ARGS.port == 7999 and mod.ARGS.host == "127.0.0.1" and mod.ARGS.checkpoint == str(ckpt)
    args = mod.parse_args(["--host", "0.0.0.0", "--port", "8080", "--share", "--threads", "1",
                           "--checkpoint", "x.pt"])
    assert (args.host, args.port, args.share, args.threads, args.checkpoint) == ("0.0.0.0", 8080, True, 1, "x.pt")
    # the fast path: on by default and built at start (a tiny model has one), off by flag or environment
    assert mod.ARGS.fast_path == "on" and mod.LOADED.predictor.fast_path is not None
    assert "fast path on" in mod.LOADED.fast_path_note
    assert mod.parse_args(["--fast-path", "off"]).fast_path == "off"
    # concurrent expressions: one per torch thread by default, the one-thread session loaded when > 1
    assert mod.PARALLEL == mod.THREADS and mod.ARGS.parallel is None
    assert (mod.LOADED.predictor.fast_path.single_thread_session is not None) == (mod.PARALLEL > 1)
    assert mod.parse_args(["--parallel", "1"]).parallel == 1
    monkeypatch.setenv("MABP_PARALLEL", "3")
    assert mod.parse_args([]).parallel == 3
    monkeypatch.setenv("MABP_FAST_PATH", "0")
    assert mod.parse_args([]).fast_path == "off"
    monkeypatch.setenv("MABP_FAST_PATH", "maybe")
    with pytest.raises(SystemExit):
        mod.parse_args([])


def test_load_model_fast_path_is_shared_and_switchable(tmp_path):
    from mabp.registry import save_checkpoint

    ckpt = save_checkpoint(tiny_predictor().model, tmp_path / "tiny.pt")
    off = load_model(str(ckpt), env={})
    assert off.predictor.fast_path is None and "disabled" in off.fast_path_note
    on = load_model(str(ckpt), env={}, fast_path=True)
    assert on.predictor.fast_path is not None
    # every predictor the service makes for another image shares the one fast path
    service = SegmentService(on.predictor, max_images=2)
    rgb = np.full((64, 64, 3), 90, np.uint8)
    for i in range(3):
        rgb[i, i] = 200 + i
        pred, _ = service._predictor_for(rgb.copy(), f"img{i}")
        assert pred.fast_path is on.predictor.fast_path
    r = service.predict(rgb, "img2", "the red circle")
    assert r.extras["engine"] == "onnxruntime"


# ---------------------------------------------------------------------------- gradio_client
def test_gradio_client_round_trip(demo, files):
    from gradio_client import Client, handle_file

    with running(demo) as url:
        client = Client(url, verbose=False)
        mask_path, info = client.predict(handle_file(str(SCENE)), "the red circle", 0.5, api_name="/segment")
        mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
        assert mask.shape == (320, 320) and set(np.unique(mask)) <= {0, 255}
        assert set(info) >= {"no_target", "nt_prob", "area_fraction", "latency_ms", "truncated"}
        assert 0.0 <= info["nt_prob"] <= 1.0 and info["truncated"] is False
        for path, text, needle in [(files["not_image"], "x", "not an image"), (files["huge"], "x", "too large"),
                                   (SCENE, "", "empty"), (SCENE, "\u200b", "empty")]:
            with pytest.raises(Exception, match=needle):
                client.predict(handle_file(str(path)), text, 0.5, api_name="/segment")
        # the server survived every bad request
        _, info2 = client.predict(handle_file(str(SCENE)), "all squares", 0.5, api_name="/segment")
        assert "latency_ms" in info2


def test_png_writer_gives_every_picture_its_own_file(tmp_path):
    from app.outputs import PngWriter

    w = PngWriter(tmp_path)
    empty = np.zeros((30, 40), np.uint8)  # two identical "no target" masks (the race Gradio's own cache has)
    a, b = w.write(empty, "mask"), w.write(empty, "mask")
    assert a != b and np.array_equal(_img(a), _img(b)) and _img(a).shape == (30, 40)
    rgb = np.random.RandomState(0).randint(0, 255, (8, 9, 3)).astype(np.uint8)
    assert np.array_equal(_img(w.write(rgb)), rgb)  # colour order preserved
    assert not list(tmp_path.glob("*.tmp"))


def test_spaces_front_matter_matches_the_pinned_gradio():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n")
    front = readme.split("---\n")[1]
    meta = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["license"] == "mit"
    assert meta["pinned"] == "false" and len(meta["short_description"]) <= 60
    assert meta["sdk_version"] == gr.__version__  # the installed, pinned gradio
    reqs = (ROOT / "requirements.txt").read_text()
    assert f"gradio=={meta['sdk_version']}" in reqs


def test_model_thread_runs_every_model_call_on_one_thread():
    """With a ModelThread, loading, image encoding and every pass run on that one thread whichever
    thread calls (libgomp's spin-wait is throttled once several threads own OpenMP teams), errors come
    back to the caller, and results equal the inline service's."""
    runner = ModelThread(1)
    try:
        pred = runner.run(tiny_predictor)
        service, inline = SegmentService(pred, max_images=2, runner=runner), SegmentService(tiny_predictor())
        seen = set()
        original = pred.model.forward_features

        def spy(*a, **k):
            seen.add(threading.current_thread().name)
            return original(*a, **k)

        pred.model.forward_features = spy
        image = np.random.RandomState(1).randint(0, 255, (60, 70, 3)).astype(np.uint8)
        key = service.load(image)
        steps = []
        service.prepare(*key, progress=lambda f, msg: steps.append((threading.current_thread().name, msg)))
        assert steps and steps[0][0] == threading.current_thread().name  # progress from the caller
        out = {}
        workers = [threading.Thread(target=lambda t=t: out.__setitem__(t, service.predict(*key, t)))
                   for t in ("the red circle", "all squares", "the left star")]
        for th in workers:
            th.start()
        for th in workers:
            th.join()
        assert seen and all(name.startswith("mabp-model") for name in seen), seen
        for t, r in out.items():
            assert np.array_equal(r.raw_mask, inline.predict(*inline.load(image), t).raw_mask)
        with pytest.raises(InputError, match="empty"):
            service.predict(*key, "   ")
        with pytest.raises(InputError, match="empty"):
            service.predict(*key, "\u200b\u00ad")  # no word piece
        with pytest.raises(InputError):
            runner.run(pred.predict, "")  # raised on the model thread, re-raised here
    finally:
        runner.shutdown()


def _dl_path(button) -> str:
    value = button.value
    return value if isinstance(value, str) else value["path"]


def test_view_switch_and_large_images_preview_at_most_1600_px(tmp_path):
    pred = tiny_predictor()
    force_no_target(pred.model, False)
    cbx = DemoCallbacks(SegmentService(pred))
    big = tmp_path / "big.png"
    rgb = np.random.RandomState(0).randint(0, 255, (1800, 2400, 3)).astype(np.uint8)
    cv2.imwrite(str(big), rgb)
    out = cbx.segment(str(big), "everything", 0.01, "any", "segmentation", None)
    session = out[0]
    assert session.result.mask.any()
    assert _img(out[2]).shape == (1200, 1600, 3)  # the preview
    mask = cv2.imread(_dl_path(out[6]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1800, 2400) and set(np.unique(mask)) <= {0, 255}  # the download: original size
    as_mask = _img(cbx.change_view(str(big), session, "mask"))
    assert as_mask.shape == (1200, 1600, 3) and set(np.unique(as_mask)) <= {0, 255}
    cut = _img(cbx.change_view(str(big), session, "cut-out"))
    assert cut.shape == (1200, 1600, 3)
    assert cbx.change_view(str(big), Session(), "mask") == gr.skip()  # nothing segmented yet
    out = cbx.segment(str(big), "everything", 0.01, "any", "segmentation", session, "mask")
    assert np.array_equal(_img(out[2]), as_mask)


def test_out_of_vocabulary_expressions_get_a_notice_and_still_an_answer(files):
    from app.model_card import ModelCard
    from train.data.synthgres.world_vocabulary import world_vocabulary

    card = ModelCard(preset="lite", worlds=("SynthGRES shapes",), vocabulary=world_vocabulary("shapes"),
                     vocabulary_kind="closed")
    cbx = DemoCallbacks(SegmentService(tiny_predictor()), card=card)
    for text in ("the woman", "🔴 ⭕ 🟢", "红色的圆", "?!..."):
        out = cbx.segment(str(files["rgb"]), text, 0.5, "any", "segmentation", None)
        assert not _is_error(out) and 'id="mabp-oov"' in out[1] and "training data" in out[1], text
        assert ("Target found" in out[1]) or ("No target" in out[1])  # the answer is still shown
        assert cbx.api_segment(str(files["rgb"]), text, 0.5)[1]["out_of_vocabulary"] is True
    out = cbx.segment(str(files["rgb"]), "the two red circles", 0.5, "any", "segmentation", None)
    assert "mabp-oov" not in out[1]
    info = cbx.api_segment(str(files["rgb"]), "the red circle", 0.5)[1]
    assert info["out_of_vocabulary"] is False and info["known_only_from_drawings"] == []
    assert info["mask_refinement"] == "none"  # the tiny preset does not refine (inference.refine "none")
    # a photo-world model that saw cats only as drawings: said beside the answer and in the API's JSON
    from mabp.vocabulary import ModelVocabulary
    from app.model_card import drawn_only_of

    vocab = ModelVocabulary(worlds=("shapes", "photo"), nouns=("circle", "cat", "dog"), colours=("red",))
    photo = ModelCard(preset="lite", worlds=("SynthGRES shapes", "SynthGRES photo"), vocabulary=vocab,
                      vocabulary_kind="closed", drawn_only=drawn_only_of(vocab))
    cbp = DemoCallbacks(SegmentService(tiny_predictor()), card=photo)
    out = cbp.segment(str(files["rgb"]), "the red cat", 0.5, "any", "segmentation", None)
    assert "only from drawings" in out[1] and not _is_error(out)
    assert cbp.api_segment(str(files["rgb"]), "the cat", 0.5)[1]["known_only_from_drawings"] == ["cat"]
    assert cbp.api_segment(str(files["rgb"]), "the dog", 0.5)[1]["known_only_from_drawings"] == []


def test_non_image_upload_leaves_a_lasting_error_and_clears_the_old_result(cb, files):
    good = cb.segment(str(files["rgb"]), "the red circle", 0.5, "any", "segmentation", None)
    assert good[2] is not None
    for kind in ("not_image", "empty"):
        out = cb.prepare_image(str(files[kind]), good[0])
        assert _is_error(out) and out[2] is None and out[3] == [] and out[4] == ""
        assert out[0].result is None and out[0].key is None
        assert out[6].interactive is False  # no download of the old mask


def test_damaged_jpeg_is_reported_in_words(tmp_path, cb):
    rgb = cv2.resize(cv2.imread(str(SCENE)), (640, 640))
    data = bytearray(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    rng = np.random.RandomState(0)
    start = len(data) // 3
    data[start:start + 200] = bytes(rng.randint(0, 256, 200).astype(np.uint8))  # overwritten bytes
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(data))
    out = cb.prepare_image(str(path), None)
    assert not _is_error(out) and "JPEG data is damaged" in out[1] and "Corrupt JPEG data" in out[1]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    out = cb.prepare_image(str(cut), None)
    assert _is_error(out) and ("truncated" in out[1] or "corrupted" in out[1])


def test_default_region_is_the_one_holding_most_of_the_mask(files):
    pred = tiny_predictor()
    force_no_target(pred.model, False)
    cbx = DemoCallbacks(SegmentService(pred))
    session = cbx.segment(str(files["rgb"]), "everything", 0.3, "any", "regions", None)[0]
    assert session.point is None and session.info is not None
    out = cbx.render_tab(str(files["rgb"]), "regions", session, 1, 0, 0, 4, None)
    sc = session.info.scales[1]
    from app.render import largest_mask_region

    best = largest_mask_region(sc.boxes, sc.share)
    assert best is not None and sc.share[best] > 0
    assert f"Selected region {best} " in out[4] and out[1].value == best


def test_world_choice_with_a_fake_scene_generator(cb, monkeypatch):
    def fake(seed, size=320, n=6, world="shapes"):
        if world == "photo":
            raise MissingPackages("the photo world needs Debian packages: apt-get install fonts-dejavu")
        return np.full((size, size, 3), seed % 255, np.uint8), None, [("the red circle", [0], {})]

    class MissingPackages(RuntimeError):
        pass

    def old(seed, size=320):
        return np.zeros((size, size, 3), np.uint8), None, []

    monkeypatch.setattr(cb, "random_scene", fake)
    out = cb.new_scene(5, "photo")
    assert out[:4] == [gr.skip()] * 4 and "mabp-error" in out[4] and "apt-get install fonts-dejavu" in out[4]
    out = cb.new_scene(5, "shapes")
    assert "shapes world" in out[4] and out[3].label
    monkeypatch.setattr(cb, "random_scene", old)
    out = cb.new_scene(5, "photo")
    assert "mabp-error" in out[4] and "no photo world" in out[4]


def test_photo_world_examples_are_generated_at_start_or_skipped(tmp_path, caplog):
    import json
    import logging

    ex = tmp_path / "examples"
    ex.mkdir()
    (ex / "examples.json").write_text(json.dumps({"examples": [
        {"kind": "synthgres-photo", "seed": 4, "title": "Photo scene #4",
         "expressions": [{"text": "the pig", "expected": "target", "target_ids": [1], "min_iou": 0.5}]},
        {"file": "gone.png", "kind": "photo", "gallery": False, "expressions": [{"text": "x", "expected": "target"}]},
    ]}))

    def fake(seed, size=320, n=6, world="shapes"):
        assert world == "photo"
        return np.full((size, size, 3), 7, np.uint8), None, []

    rows, _labels, chips = ui.load_examples(ex, fake, tmp_path / "gen")
    assert len(rows) == 1 and rows[0][1] == "the pig" and rows[0][2] == "target: object 1"
    assert (tmp_path / "gen" / "synthgres-photo-4.png").is_file() and chips["synthgres-photo-4.png"] == ["the pig"]

    def missing(seed, size=320, n=6, world="shapes"):
        raise RuntimeError("install the Debian package xyz")

    with caplog.at_level(logging.INFO, logger="mabp.app"):
        rows, _labels, _chips = ui.load_examples(ex, missing, tmp_path / "gen2")
    assert rows == [] and "Photo scene #4" in caplog.text and "xyz" in caplog.text
    rows, _labels, _chips = ui.load_examples(ex, lambda seed, size=320: None, tmp_path / "gen3")  # old signature
    assert rows == []


def test_example_chips(cb):
    cb.chips = {"scene.png": ["the red circle", "the stars"]}
    ds = cb.example_chips("/some/cache/dir/scene.png")
    samples = ds.constructor_args["samples"] if hasattr(ds, "constructor_args") else ds.samples
    assert samples == [["the red circle"], ["the stars"]]
    assert cb.example_chips("/x/other.png").constructor_args.get("visible") is False


def test_caches_are_capped_by_bytes():
    service = SegmentService(tiny_predictor(), max_images=4, max_bytes=3 * 200 * 300 * 3)
    rng = np.random.RandomState(0)
    for i in range(4):
        rgb = rng.randint(0, 255, (200, 300, 3)).astype(np.uint8)
        service.predict(*service.load(rgb), "the red circle")
        assert service.pool_bytes() <= service.max_bytes or len(service._pool) == 1
    assert len(service._pool) < 4


def test_parallel_service_answers_concurrent_expressions_like_the_serial_one():
    """parallel=2 (app.py's default on 2 cores): expressions run on expression workers outside the model
    lock; their answers equal the eager serial service's, an image in use is never evicted (max_images=1
    with three images in flight), and introspection still runs eagerly on the model thread."""
    from concurrent.futures import ThreadPoolExecutor

    from mabp.fast_path import build_fast_path
    from mabp.predictor import MABPPredictor

    model = tiny_predictor().model
    path, note = build_fast_path(model, threads=2, concurrent=True)
    assert path is not None, note
    runner = ModelThread(1)
    try:
        service = SegmentService(MABPPredictor(model, fast_path=path), max_images=1, runner=runner, parallel=2)
        assert service.parallel == 2
        serial = SegmentService(MABPPredictor(model), max_images=4)
        images = []
        for i in range(3):
            rgb = np.full((60, 80, 3), 40 * (i + 1), np.uint8)
            rgb[10:30, 10 + 10 * i:40 + 10 * i] = (220, 30, 30)
            images.append(rgb)
        jobs = [(i % 3, f"{t} {i}") for i, t in enumerate(["the red circle", "all squares", "the cat"] * 4)]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda j: service.predict(images[j[0]], f"img{j[0]}", j[1]), jobs))
        for (i, text), r in zip(jobs, got):
            e = serial.predict(images[i], f"img{i}", text)
            assert r.extras["engine"] == "onnxruntime" and r.no_target == e.no_target
            assert abs(r.nt_prob - e.nt_prob) < 1e-4 and (r.mask == e.mask).mean() > 0.999
            assert r.mask.shape == images[i].shape[:2]
        assert not service._in_use and len(service._pool) == 1  # back under the cap once all were answered
        assert path._requests == 0
        r = service.predict(images[0], "img0", "the red circle", introspect=True)
        assert r.extras["engine"] == "pytorch" and "introspection" in r.extras
        # without the one-thread session there is nothing to run in parallel
        single, _ = build_fast_path(model, threads=2)
        assert SegmentService(MABPPredictor(model, fast_path=single), parallel=2).parallel == 1
    finally:
        runner.shutdown()
