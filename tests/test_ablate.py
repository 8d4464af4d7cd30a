"""The ablation driver end to end on the tiny preset (2 steps per variant)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import ablate


def test_ablate_runs_variants_and_writes_tables(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "abl"
    code = ablate.main(["--steps", "2", "--val-samples", "13", "--batch-size", "13", "--out", str(out),
                        "--variants", "table5_naive", "table6_nt_none", "table5_full", "table6_full", "rela",
                        "--seeds-for", "rela=0,1", "--eval-every", "1",
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
        assert run["steps"] == 2 and run["n"] == 13 and run["gIoU"] is not None
        assert [p["step"] for p in run["curve"]] == [1, 2] and set(run["by_tag"]) <= set(ablate.TAGS)
        assert (out / name / "seed0" / "ablation_result.json").is_file()
        # the threshold-free NT score (val sample 12 is the first no-target one): a percentage for every model with
        # an NT branch, None without one
        auroc = run["NT-AUROC"]
        assert auroc is None if name == "table6_nt_none" else 0.0 <= auroc <= 100.0
        assert all("NT-AUROC" in p for p in run["curve"])
    assert len(res["rela"]) == 2 and len(res["table5_naive"]) == 1  # --seeds-for
    assert (out / "curves.png").stat().st_size > 0
    assert "gIoU by target tag" in table and "The paper's claims" in table
    assert "| no-target | NT AUROC | seeds |" in table
    assert {v["claim"] for v in data["verdicts"]} >= {"MABP over ReLA (gIoU)"}
    # a re-run resumes finished runs instead of training again
    assert ablate.main(["--steps", "2", "--val-samples", "13", "--out", str(out), "--variants", "rela",
                        "--set", "train.batch_size=2", "data.val_samples=4"]) == 0


def test_claim_verdicts_by_hand():
    runs = lambda *vals: [{"gIoU": v, "N-acc": v} for v in vals]  # noqa: E731
    res = {"table5_naive": runs(60.0, 61.0, 59.0), "table5_rsh": runs(65.0, 66.0, 64.0),
           "table5_mmd": runs(64.0, 67.0, 65.0), "table5_full": runs(50.0)}
    v = {x["claim"]: x for x in ablate.claim_verdicts(res)}
    assert v["RSH over the naive head"]["verdict"] == "holds" and v["RSH over the naive head"]["diff"] == 5.0
    # Welch: t = 5 / sqrt(1/3 + 1/3) = 6.12 with 4 degrees of freedom -> p = 0.0036
    assert v["RSH over the naive head"]["p"] == pytest.approx(0.0036, abs=2e-4)
    assert math.isnan(v["query generator over random queries"]["p"])
    assert v["MMD over RIA/RLA"]["verdict"] == "within noise"
    assert v["query generator over random queries"]["verdict"] == "one seed: noise unknown"
    res["table5_rsh"] = runs(50.0, 51.0, 49.0)
    assert {x["claim"]: x for x in ablate.claim_verdicts(res)}["RSH over the naive head"]["verdict"] == "reversed"
    assert "MABP over ReLA (gIoU)" not in v  # ReLA not run: no verdict
    table = ablate.format_tables(res, ablate.build_parser().parse_args([]))
    one_seed = next(line for line in table.splitlines() if line.startswith("| query generator"))
    assert "±nan" not in table and "| -15.33 | – | – |" in one_seed  # no noise figure for a one-seed row
    assert "| -10.00 | ±1.63 | < 0.001 |" in table  # RSH − Naive: 2 × sqrt(1/3 + 1/3), t = -12.2


def _fake_result(name, seed, args, giou=None):
    """What run_variant leaves behind: the cached ablation_result.json of a finished run."""
    metrics = {"gIoU": 50.0 + seed if giou is None else giou, "N-acc": 40.0, "nt_rule": "any", "by_tag": {},
               "curve": [], "train_s": 60, "sec_per_step": 1.0}
    run = Path(args.out) / name / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "ablation_result.json").write_text(json.dumps({"key": ablate._result_key(args), "metrics": metrics}))
    return metrics


def test_two_runners_share_a_plan(tmp_path, monkeypatch, capsys):
    """A run claimed by another live runner is skipped, the rest of the plan goes on, the report counts
    every finished run on disk; the next runner trains what was skipped."""
    from train.run_lock import RunLock

    calls = []
    monkeypatch.setattr(ablate, "run_variant", lambda n, s, a: calls.append((n, s)) or _fake_result(n, s, a))
    out = tmp_path / "abl"
    cmd = ["--out", str(out), "--variants", "table5_naive", "rela", "--seeds", "0", "1"]
    other = RunLock(out / "rela" / "seed0", name=ablate.CLAIM_NAME).acquire()  # "another runner" holds it
    try:
        assert ablate.main(cmd) == 0
    finally:
        other.release()
    assert calls == [("table5_naive", 0), ("table5_naive", 1), ("rela", 1)]
    err = capsys.readouterr().err
    assert "rela seed 0: skipped, another runner has it" in err and "1 run(s) were being trained" in err
    assert "Partial: 3 of 4 runs finished" in (out / "ablation.md").read_text()
    calls.clear()
    assert ablate.main(cmd) == 0  # the claim is free again: only the missing run is trained
    assert calls == [("rela", 0)]
    assert json.loads((out / "ablation.json").read_text())["runs_done"] == 4
    assert "Partial" not in (out / "ablation.md").read_text()
    assert not list(out.glob(".*tmp")) and not list(out.glob(".curves.*"))  # atomic writes leave nothing


def test_a_run_locked_by_a_train_fit_outside_any_claim_is_skipped(tmp_path, monkeypatch, capsys):
    from train.run_lock import RunLockedError

    def busy(name, seed, args):
        if name == "rela":
            raise RunLockedError(f"the run folder {args.out}/rela/seed0 is in use by run x (pid 1)")
        return _fake_result(name, seed, args)

    monkeypatch.setattr(ablate, "run_variant", busy)
    out = tmp_path / "abl"
    assert ablate.main(["--out", str(out), "--variants", "rela", "table5_naive"]) == 0
    assert "skipped: the run folder" in capsys.readouterr().err
    assert json.loads((out / "ablation.json").read_text())["runs_done"] == 1


def test_sweep_is_seed_major_and_reports_after_every_run(tmp_path, monkeypatch):
    """A sweep stopped part-way has every variant's first seed, and the report says how far it got."""
    calls, reports = [], []

    def fake_run(name, seed, args):
        calls.append((name, seed))
        if len(calls) == 3:  # the session ends during the third run
            raise KeyboardInterrupt
        return _fake_result(name, seed, args)

    real_write = ablate.write_report
    monkeypatch.setattr(ablate, "run_variant", fake_run)
    report_args = []
    monkeypatch.setattr(ablate, "write_report",
                        lambda *a, **k: reports.append(k) or report_args.append(a) or real_write(*a, **k))
    out = tmp_path / "abl"
    code = ablate.main(["--out", str(out), "--variants", "table5_naive", "rela", "table5_full",
                        "--seeds", "0", "--seeds-for", "table5_naive=0,1", "rela=0,1"])
    assert code == 130
    assert calls == [("table5_naive", 0), ("rela", 0), ("table5_full", 0)]
    assert [(r["done"], r["total"]) for r in reports] == [(1, 5), (2, 5)]
    # each report holds the run that just finished (not the state before it)
    assert [sum(len(v) for v in a[0].values()) for a in report_args] == [1, 2]
    text = (out / "ablation.md").read_text()
    assert "Partial: 2 of 5 runs finished" in text and "ReLA" in text


def test_report_only_reads_finished_runs_and_trains_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    common = ["--out", str(out), "--variants", "table5_naive", "table5_full", "--seeds", "0", "1",
              "--steps", "30", "--val-samples", "40"]
    assert ablate.main(common + ["--report-only"]) == 1  # nothing finished yet: says so
    assert "no finished run" in capsys.readouterr().err
    key = {"steps": 30, "val_samples": 40, "split": "val", "dataset": "synthgres"}
    for name, seed, giou in (("table5_naive", 0, 50.0), ("table5_full", 0, 52.0), ("table5_full", 1, 53.0)):
        run = out / name / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "ablation_result.json").write_text(json.dumps({"key": key, "metrics": {
            "gIoU": giou, "N-acc": 40.0, "nt_rule": "any", "by_tag": {}, "curve": []}}))
        (run / "log.jsonl").write_text(json.dumps({"type": "train", "step": 10, "sec_per_step": 1.5}) + "\n")
    other = out / "table5_naive" / "seed1"  # another budget's result does not count
    other.mkdir(parents=True)
    (other / "ablation_result.json").write_text(json.dumps({"key": dict(key, steps=99), "metrics": {"gIoU": 1.0}}))
    monkeypatch.setattr(ablate, "run_variant", lambda *a: pytest.fail("--report-only must not train"))
    assert ablate.main(common + ["--report-only"]) == 0
    text = (out / "ablation.md").read_text()
    assert "Partial: 3 of 4 runs finished" in text and "52.50 ± 0.71" in text and "| 1.50 ± 0.00 |" in text


def test_world_is_trained_evaluated_and_keyed(tmp_path, monkeypatch):
    """--world photo (or a config with data.kwargs.world) trains on that world, keys the cached results by
    it (a shapes result is not reused) and says so in the report; the shapes world keeps the old key."""
    seen = []

    def fake(name, seed, args):
        seen.append((name, seed, args.world_resolved, [o for o in args.override if "world" in o]))
        return _fake_result(name, seed, args)

    monkeypatch.setattr(ablate, "run_variant", fake)
    out = tmp_path / "abl"
    shapes = ["--out", str(out), "--variants", "rela", "--seeds", "0"]
    assert ablate.main(shapes) == 0
    key = json.loads((out / "rela" / "seed0" / "ablation_result.json").read_text())["key"]
    assert "world" not in key and seen == [("rela", 0, None, [])]
    assert ablate.main(shapes + ["--world", "photo"]) == 0  # not the shapes result: trained again
    assert seen[-1] == ("rela", 0, "photo", ["data.kwargs.world=photo"])
    assert json.loads((out / "rela" / "seed0" / "ablation_result.json").read_text())["key"]["world"] == "photo"
    assert "(photo world)" in (out / "ablation.md").read_text()
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text("data:\n  kwargs:\n    world: mixed\n")
    args = ablate.build_parser().parse_args(["--config", str(cfg)])
    assert ablate.training_world(args) == "mixed"
    assert ablate.main(["--config", str(tmp_path / "missing.yaml")] + shapes) == 2


def test_results_mirror_carries_a_sweep_to_a_new_machine(tmp_path, monkeypatch):
    """--results keeps every finished run as a small JSON file; with the run folders gone (a new machine)
    the sweep counts those runs as finished, trains only the missing ones, and --report-only still works.
    A run another budget finished is not counted."""
    calls = []
    monkeypatch.setattr(ablate, "run_variant", lambda n, s, a: calls.append((n, s)) or _fake_result(n, s, a))
    out, mirror = tmp_path / "runs", tmp_path / "results"
    cmd = ["--out", str(out), "--results", str(mirror), "--variants", "table5_naive", "rela", "--seeds", "0"]
    assert ablate.main(cmd) == 0 and calls == [("table5_naive", 0), ("rela", 0)]
    # the fake run wrote only the run folder's file: collecting the finished runs mirrors them
    saved = json.loads((mirror / "rela" / "seed0.json").read_text())
    assert saved["key"]["steps"] == 300 and saved["metrics"]["gIoU"] == 50.0
    shutil.rmtree(out)  # the new machine: no run folder
    calls.clear()
    assert ablate.main(cmd + ["--seeds-for", "rela=0,1"]) == 0
    assert calls == [("rela", 1)]  # only the run that was never finished
    assert (mirror / "rela" / "seed1.json").is_file()
    shutil.rmtree(out)
    assert ablate.main(cmd + ["--report-only"]) == 0
    assert json.loads((out / "ablation.json").read_text())["runs_done"] == 2
    calls.clear()
    assert ablate.main(cmd + ["--steps", "400"]) == 0  # another budget: the mirror's runs do not count
    assert calls == [("table5_naive", 0), ("rela", 0)]
    assert json.loads((mirror / "rela" / "seed0.json").read_text())["key"]["steps"] == 300  # nor are lost
    (mirror / "table5_naive" / "seed0.json").write_text("{not json")  # a damaged file is a missing run
    args = ablate.build_parser().parse_args(cmd)
    shutil.rmtree(out)
    assert ablate.cached_result("table5_naive", 0, args) is None


def test_run_variant_evaluates_on_the_training_world(tmp_path, monkeypatch):
    """The final evaluation of a run is built on the world the run trained on (not the shapes default)."""
    import mabp
    import train.data
    import train.evaluate
    import train.fit

    tiny = mabp.build_mabp("tiny")
    built, trained = [], []

    def fake_fit(cfg, overrides, extra):
        trained.append(overrides)
        out = next(o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir="))
        Path(out).mkdir(parents=True, exist_ok=True)  # what a real run leaves: its folder
        return {"step": 2}

    monkeypatch.setattr(train.fit, "fit", fake_fit)
    monkeypatch.setattr(mabp, "build_mabp", lambda **kw: tiny)
    monkeypatch.setattr(train.data, "build_dataset", lambda *a, **kw: built.append(kw) or [])
    monkeypatch.setattr(train.evaluate, "evaluate_model",
                        lambda *a, **kw: {"metrics": {"gIoU": 1.0}, "n": 0, "nt_rule": "any"})
    args = ablate.build_parser().parse_args(["--out", str(tmp_path), "--steps", "2"])
    args.override = ["data.kwargs.world=photo"]
    args.world_resolved = ablate.training_world(args)
    assert args.world_resolved == "photo"
    args.results = str(tmp_path / "mirror")
    metrics = ablate.run_variant("rela", 0, args)
    assert built[0]["world"] == "photo" and "data.kwargs.world=photo" in trained[0]
    assert metrics["gIoU"] == 1.0
    mirrored = json.loads((tmp_path / "mirror" / "rela" / "seed0.json").read_text())
    assert mirrored == json.loads((tmp_path / "rela" / "seed0" / "ablation_result.json").read_text())
    args.override, args.world_resolved = [], None
    ablate.run_variant("table5_naive", 0, args)
    assert "world" not in built[1]


def test_photo_sweep_script_arguments_parse(tmp_path):
    """scripts/ablate_photo.sh hands train.ablate a valid plan: with --report-only on an empty folder the
    runner gets as far as looking for finished 4,000-step photo runs (nothing is trained)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OUT=str(tmp_path / "sweep"), RESULTS=str(tmp_path / "results"), PYTHON=sys.executable)
    out = subprocess.run(["bash", str(root / "scripts" / "ablate_photo.sh"), "--report-only"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-1000:]
    assert "no finished run" in out.stderr and "--steps 4000" in out.stderr and "world photo" in out.stderr


def test_paired_verdicts_by_hand():
    """Per-seed differences: a shared seed effect that Welch counts as noise cancels when paired."""
    runs = lambda vals: [{"N-acc": v, "gIoU": v, "seed": s} for s, v in vals.items()]  # noqa: E731
    # every variant's seed 1 sits ~10 points under its seed 0; NT on all heads is +7 and +6 at each seed
    res = {"table6_nt_last": runs({0: 60.0, 1: 50.0}), "table6_full": runs({0: 67.0, 1: 56.0}),
           "table5_naive": runs({0: 60.0, 1: 61.0, 2: 59.0}), "table5_rsh": runs({1: 62.0, 2: 58.0}),
           "table5_mmd": runs({0: 70.0})}
    welch = {x["claim"]: x for x in ablate.claim_verdicts(res)}
    paired = {x["claim"]: x for x in ablate.paired_verdicts(res)}
    claim = "NT branch on all heads over the last head only"
    assert welch[claim]["verdict"] == "within noise"  # +6.5 against 2 x sqrt(50/2 + 60.5/2) = ±14.9
    p = paired[claim]
    assert p["seeds"] == [0, 1] and p["diffs"] == [7.0, 6.0] and p["diff"] == 6.5
    assert p["noise"] == pytest.approx(1.0) and p["verdict"] == "holds"  # 2 x stdev(7, 6) / sqrt(2)
    assert p["p"] == pytest.approx(0.049, abs=1e-3)  # t = 6.5 / 0.5 = 13 with 1 degree of freedom
    # only the seeds both variants ran are paired: RSH has seeds 1, 2 -> diffs +1, -1
    rsh = paired["RSH over the naive head"]
    assert rsh["seeds"] == [1, 2] and rsh["diffs"] == [1.0, -1.0] and rsh["verdict"] == "within noise"
    assert "MMD over RIA/RLA" not in paired  # MMD ran seed 0 only, RSH seeds 1 and 2: nothing to pair
    res["table5_rsh"].append({"gIoU": 65.0, "N-acc": 65.0, "seed": 0})
    one = {x["claim"]: x for x in ablate.paired_verdicts(res)}["MMD over RIA/RLA"]
    assert one["seeds"] == [0] and one["verdict"] == "one seed: noise unknown" and math.isnan(one["noise"])
    # runs without a seed (results cached before the field) are left out, never mis-paired
    assert ablate.paired_verdicts({"table6_nt_last": [{"N-acc": 1.0}], "table6_full": [{"N-acc": 2.0}]}) == []
    table = ablate.format_tables(res, ablate.build_parser().parse_args([]))
    assert "### The same claims, paired by seed" in table
    assert "| NT branch on all heads over the last head only | N-acc | 0, 1 | +7.00, +6.00 | +6.50 | ±1.00 | 0.049 |" \
        in table
