"""Convert released weights into an MABP checkpoint of this project.

    python -m train.convert --from official-mabp MABP_best.pth --to mabp-paper.pt [--half] [--bert DIR]
    python -m train.convert --from swin-imagenet swin_base_patch4_window12_384_22k.pth --to paper-init.pt \\
        --bert weights/bert-base-uncased [--window 7]

The logic lives in `mabp.convert` (importable: `convert_official_mabp`, `convert_swin_imagenet`); see
docs/convert.md for where to get the files and what the report means.
"""
from __future__ import annotations

import sys

from mabp.convert import main

if __name__ == "__main__":
    sys.exit(main())
