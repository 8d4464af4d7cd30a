"""Gradio component subclasses of the demo.

Kept in their own module on purpose: Gradio's component metaclass writes a `.pyi` stub of the
defining module next to it at import time (`app/components.pyi`, ignored by git); here that stub
stays small instead of duplicating the whole UI file.
"""
from typing import Any

import gradio as gr


EXAMPLE_IMAGE = "assets/examples/scene.png"  # relative to the repository root, as in README.md


class SafeImage(gr.Image):
    """gr.Image whose upload preprocessing never fails inside Gradio.

    gr.Image(type="filepath") opens the header with Pillow; a corrupted or non-image file (a .txt
    renamed .png, an empty file) fails right there, before any callback runs, and every output of the
    event shows a bare red "Error" while the banner keeps the previous result. Here an unreadable
    upload is passed on as its file path instead: the app's own reader (mabp.image_files) refuses it
    with a message saying what is wrong, shown in the lasting banner, and the old result is cleared.
    `is_template` makes the frontend use the stock Image.
    """

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        """gr.Image.preprocess; an unreadable upload goes on as its path (the callback explains)."""
        from PIL import Image

        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            path = getattr(payload, "path", None)
            if path:
                return str(path)
            if isinstance(exc, Image.DecompressionBombError):  # > 178 MP: Pillow refuses to even open it
                raise gr.Error("The image is far too large (the limit is 40 MP). Downscale it and try again.",
                               print_exception=False) from None
            raise gr.Error("The uploaded file is not an image this app can read (PNG, JPEG, BMP, TIFF, WebP "
                           "or GIF), or it is corrupted.", print_exception=False) from None


def _described(info: dict, text: str) -> dict:
    info = dict(info)
    info["additional_description"] = text
    info["description"] = text
    return info


class ApiImageFile(gr.File):
    """The /segment endpoint's image parameter: documented for the API page, with an example that runs
    as written from a clone of this repository (the page's default is a sample PDF on the internet)."""

    is_template = True

    def api_info(self) -> dict:
        return _described(super().api_info(), "The image file to segment (PNG, JPEG, BMP, TIFF, WebP or GIF; at "
                          "most 40 MP and 64 MB). Pass handle_file(path_or_url).")

    def example_payload(self) -> Any:
        return {"path": EXAMPLE_IMAGE, "url": EXAMPLE_IMAGE, "orig_name": "scene.png",
                "meta": {"_type": "gradio.FileData"}}

    def example_value(self) -> Any:
        return EXAMPLE_IMAGE


class ApiText(gr.Textbox):
    """The /segment endpoint's expression parameter, documented, with a real example."""

    is_template = True

    def api_info(self) -> dict:
        return _described(super().api_info(), "What to segment, in English: one object, several, or something "
                          "absent (the answer is then no_target). The model reads its first 20 tokens.")

    def example_payload(self) -> Any:
        return "the red circle"

    def example_value(self) -> Any:
        return "the red circle"


class ApiThreshold(gr.Number):
    """The /segment endpoint's mask threshold, documented, with a valid example."""

    is_template = True

    def api_info(self) -> dict:
        return _described(super().api_info(), "Mask threshold on the per-pixel probability, strictly between 0 "
                          "and 1 (default 0.5).")

    def example_payload(self) -> Any:
        return 0.5

    def example_value(self) -> Any:
        return 0.5
