"""Gradio component subclasses of the demo.

Kept in their own module on purpose: Gradio's component metaclass writes a `.pyi` stub of the
defining module next to it at import time (`app/components.pyi`, ignored by git); here that stub
stays small instead of duplicating the whole UI file.
"""
from typing import Any

import gradio as gr


class SafeImage(gr.Image):
    """gr.Image whose upload preprocessing turns an unreadable file into a clean gr.Error.

    gr.Image(type="filepath") only opens the header with Pillow, but a corrupted or non-image file
    fails right there, inside Gradio, before any callback can catch it; the user would get a bare
    "Error" and the server log a traceback. `is_template` makes the frontend use the stock Image.
    """

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        """gr.Image.preprocess, with unreadable files turned into a gr.Error the user can act on."""
        from PIL import Image

        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:  # > 178 MP: Pillow refuses to even open it
            raise gr.Error("The image is far too large (the limit is 40 MP). Downscale it and try again.",
                           print_exception=False) from None
        except Exception:
            raise gr.Error("The uploaded file is not an image this app can read (PNG, JPEG, BMP, TIFF, WebP "
                           "or GIF), or it is corrupted.", print_exception=False) from None
