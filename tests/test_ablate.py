"""The ablation driver end to end on the tiny preset (2 steps per variant)."""
import json

import torch

from train import ablate


def test_ablate_runs_variants_and_writes_tables(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "abl"
    code = ablate.main(["--steps", "2", "--val-samples", "6", "--batch-size", "6", "--out", str(out),
                        "--variants", "table5_naive", "table6_nt_none", "table5_full", "table6_full", "rela",
                        "--set", "train.batch_size=2", "data.val_samples=4"])
    assert code == 0
    table = (out / "ablation.md").read_text()
    assert "| Naive (RIA/RLA + random queries + naive head) |" in table and "63.07" in table
    assert "| ReLA (100 queries, RIA/RLA, minimap aggregation) |" in table
    data = json.loads((out / "ablation.json").read_text())
    res = data["results"]
    # the full model is trained once and reported in both tables
    assert res["table5_full"] == res["table6_full"]
    assert not (out / "table6_full").exists()
    for name in ("table5_naive", "table6_nt_none", "table5_full", "rela"):
        run = res[name][0]
        assert run["steps"] == 2 and run["n"] == 6 and run["gIoU"] is not None
    # a re-run resumes finished runs instead of training again
    assert ablate.main(["--steps", "2", "--val-samples", "6", "--out", str(out), "--variants", "rela",
                        "--set", "train.batch_size=2", "data.val_samples=4"]) == 0
