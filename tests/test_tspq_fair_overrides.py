"""The accuracy benchmarks' recipe overrides stay in step with the shipped recipes: every
(task, config, seed) row of tspq_fair.py and every point of tspq_da_copies.py loads and validates
against recipes/tspq/*.yaml (a stale override, e.g. one naming a stage the recipe no longer has,
fails here instead of hours into a run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import tspq_da_copies  # noqa: E402
import tspq_fair  # noqa: E402
import tspq_fair_configs as configs  # noqa: E402
import tspq_fair_report as report  # noqa: E402

from kronbit.runner import load_recipe  # noqa: E402

RECIPES = BENCH.parent / "recipes" / "tspq"


@pytest.mark.parametrize("task", list(configs.BUDGETS))
@pytest.mark.parametrize("name", list(configs.CONFIGS))
def test_every_fair_row_loads_against_the_shipped_recipe(task, name):
    recipe_file, _ = configs.CONFIGS[name]
    r = load_recipe(RECIPES / recipe_file, configs.overrides_for(task, name, 43, 4))
    assert r.train.seed == 43 and r.train.max_seq_length == configs.BUDGETS[task]["train.max_seq_length"]
    assert r.train.train_subset == configs.BUDGETS[task].get("train.train_subset")  # full sets but SST-2
    if configs.is_da(name):
        assert r.augment.n_copies == 4 and any(s.augment for s in r.stages)


@pytest.mark.parametrize("name", [c for c in configs.CONFIGS if c.startswith("tspq_w2a8_") and not configs.is_da(c)]
                         + ["tspq_w1a1_da_full_attention_a1_aug"])
def test_each_stage_lever_changes_one_setting_of_one_stage(name):
    """Each lever against the config its note says it is measured against ("as tspq_w2a8_w2_2ep,
    ..."), so the note under the table and the overrides cannot drift apart."""
    import re
    from dataclasses import asdict

    def stages(config):
        recipe_file, overrides = configs.CONFIGS[config]
        return [asdict(s) for s in load_recipe(RECIPES / recipe_file, overrides).stages]

    said = re.match(r"as (\w[\w.-]*)", configs.CONFIG_NOTES[name])
    assert said and said.group(1) in configs.CONFIGS, f"{name}'s note does not start with 'as <config>'"
    base = stages(said.group(1))
    lever = stages(name)
    assert [s["name"] for s in lever] == [s["name"] for s in base]
    changed = [(b["name"], k) for b, v in zip(base, lever) for k in b if b[k] != v[k]]
    assert len(changed) == 1, changed


@pytest.mark.parametrize("plain, da", [("binary.yaml", "binary-da.yaml"), ("ternary.yaml", "ternary-da.yaml")])
def test_a_da_recipe_is_its_plain_recipe_with_augmented_stages(plain, da):
    """A DA row measures what the augmented data buys: its recipe may differ from the plain one only
    in which stages augment and how many epochs those run (an augmented epoch is ~5x longer)."""
    from dataclasses import asdict

    a, b = load_recipe(RECIPES / plain), load_recipe(RECIPES / da)
    for section in ("train", "kd", "quant"):
        assert asdict(getattr(a, section)) == asdict(getattr(b, section)), section
    assert [s.name for s in a.stages] == [s.name for s in b.stages]
    for sa, sb in zip(a.stages, b.stages):
        diff = {k for k, v in asdict(sa).items() if asdict(sb)[k] != v}
        assert diff <= ({"augment", "epochs"} if sb.augment else set()), (sb.name, diff)
    assert any(s.augment for s in b.stages)


@pytest.mark.parametrize("copies", [0, 1, 4, 8])
def test_every_da_point_loads_against_the_shipped_recipe(copies):
    recipe_file, overrides = tspq_da_copies.overrides_for(copies, 800, 128)
    r = load_recipe(RECIPES / recipe_file, overrides)
    assert r.train.train_subset == 800
    assert any(s.augment for s in r.stages) == (copies > 0)
    if copies:
        assert r.augment.n_copies == copies


def test_a_row_whose_recipe_another_config_already_trained_is_reused_not_retrained(tmp_path, monkeypatch):
    """When a recipe file adopts a lever config's schedule, its rows resolve to the same recipe as
    the lever's rows: the finished row is reused (and says so) instead of training it again."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(tspq_fair, "render", lambda res: "")
    monkeypatch.setitem(configs.CONFIGS, "adopted", configs.CONFIGS["tspq_w1a1_w1a4"])
    monkeypatch.setattr(tspq_fair, "run_recipe", lambda *a, **k: pytest.fail("trained a row it could reuse"))
    monkeypatch.setattr(tspq_fair, "require_teacher", lambda task: tmp_path / "teacher")  # none on a fresh machine
    res = common.Results("fair_test", "test")
    recipe_file, _ = configs.CONFIGS["tspq_w1a1_w1a4"]
    overrides = configs.overrides_for("stsb", "tspq_w1a1_w1a4", 42, 4)
    fp = configs.fingerprint(load_recipe(RECIPES / recipe_file, overrides))
    res.add("stsb/tspq_w1a1_w1a4/seed42", {"task": "stsb", "config": "tspq_w1a1_w1a4", "seed": 42,
                                                    "recipe_fingerprint": fp, "score": 0.386})
    tspq_fair.run_row(res, "stsb", "adopted", 42, 4, None, redo=False)
    row = res.data["rows"]["stsb/adopted/seed42"]
    assert row["score"] == 0.386 and row["same_run_as"] == "stsb/tspq_w1a1_w1a4/seed42"
    assert row["config"] == "adopted" and row["recipe_fingerprint"] == fp
    # another seed has no finished twin: that one would train
    with pytest.raises(pytest.fail.Exception, match="trained a row it could reuse"):
        tspq_fair.run_row(res, "stsb", "adopted", 43, 4, None, redo=False)


def test_act_bits_needs_a_finished_run_and_reads_its_binary_stages(tmp_path, monkeypatch, capsys):
    import json

    import tspq_act_bits

    monkeypatch.setattr(tspq_act_bits, "WORK", tmp_path)
    monkeypatch.setattr(sys, "argv", ["tspq_act_bits.py", "--task", "rte"])
    with pytest.raises(SystemExit, match="no finished run at .*; run `python benchmarks/tspq_fair.py --configs "
                                         "tspq_w1a1 --seeds 42 --tasks rte` first"):
        tspq_act_bits.main()
    assert not (tmp_path / "tspq_fair").exists()  # nothing written for a missing run
    table = {"primary_metric": "accuracy", "stages": [
        {"stage": "w2", "w_bits": 2, "a_bits": 32, "accuracy": 0.6},
        {"stage": "w1", "w_bits": 1, "a_bits": 32, "accuracy": 0.58},
        {"stage": "w1a2", "w_bits": 1, "a_bits": 2, "accuracy": 0.55},
        {"stage": "w1a1", "w_bits": 1, "a_bits": 1, "accuracy": 0.53}]}
    assert tspq_act_bits.trained_scores(json.loads(json.dumps(table))) == {32: ("w1", 0.58), 2: ("w1a2", 0.55), 1: ("w1a1", 0.53)}
    ternary = {"primary_metric": "pearson", "stages": [
        {"stage": "w4", "w_bits": 4, "a_bits": 32, "pearson": 0.86},
        {"stage": "w2", "w_bits": 2, "a_bits": 32, "pearson": 0.80},
        {"stage": "w2a8", "w_bits": 2, "a_bits": 8, "pearson": 0.76}]}
    assert tspq_act_bits.student_stage(ternary)["stage"] == "w2"  # the last weight-only stage
    assert tspq_act_bits.trained_scores(ternary) == {32: ("w2", 0.80), 8: ("w2a8", 0.76)}


def test_a_lever_row_starts_from_the_stages_another_row_trained_with_the_same_settings(tmp_path, monkeypatch):
    """The W2A8-stage levers share the W4 and W2 stages of tspq_w2a8_w2_2ep: a new lever run copies
    those finished stages (and only those) from that row's run directory, then resumes after them."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    res = common.Results("fair_test", "test")

    def row(config, seed=42):
        overrides = configs.overrides_for("stsb", config, seed, 4)
        recipe = load_recipe(RECIPES / configs.CONFIGS[config][0], overrides)
        return recipe, {"task": "stsb", "config": config, "seed": seed, "recipe": f"recipes/tspq/{configs.CONFIGS[config][0]}",
                        "overrides": overrides, "recipe_fingerprint": configs.fingerprint(recipe),
                        "run_dir": str(tmp_path / "runs" / config)}

    import json

    base_recipe, base = row("tspq_w2a8_w2_2ep")
    base["primary_metric"], base["stages"] = "pearson", []
    for i, st in enumerate(base_recipe.stages):  # a finished run: every stage's result and model
        d = tspq_fair.stage_dir(tmp_path / "runs" / "tspq_w2a8_w2_2ep", i, st.name)
        (d / "model").mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"stage": st.name, "pearson": 0.8 + i / 100}))
        (d / "checkpoints").mkdir()
        base["stages"].append({"stage": st.name, "pearson": 0.8 + i / 100})
    res.data["rows"]["stsb/tspq_w2a8_w2_2ep/seed42"] = base
    lever, _ = row("tspq_w2a8_a8_lr2e-5")
    out = tmp_path / "new"
    got = tspq_fair.reuse_stages(res, lever, "stsb", 42, out)
    assert got == {"from": "stsb/tspq_w2a8_w2_2ep/seed42", "stages": 2}  # w4 and w2; the changed w2a8 trains
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-w4", "02-w2"]
    assert not (out / "stages" / "01-w4" / "checkpoints").exists()
    # the shipped recipe's W2 stage is longer: only W4 is shared
    assert tspq_fair.reuse_stages(res, row("tspq_w2a8")[0], "stsb", 42, tmp_path / "new2")["stages"] == 1
    # another seed shares nothing
    assert tspq_fair.reuse_stages(res, row("tspq_w2a8_a8_lr2e-5", 43)[0], "stsb", 43, tmp_path / "new3") is None
    # a directory since overwritten by another run (a renamed row's): its W2 stage is not the row's
    w2 = tspq_fair.stage_dir(tmp_path / "runs" / "tspq_w2a8_w2_2ep", 1, "w2") / "result.json"
    w2.write_text(json.dumps({"stage": "w2", "pearson": 0.7}))
    assert tspq_fair.reuse_stages(res, lever, "stsb", 42, tmp_path / "new4")["stages"] == 1


def test_pairs_are_also_compared_on_each_rows_last_epoch(tmp_path, monkeypatch):
    """A row's score is its last stage's best evaluation; the curve of that stage (read from the run
    directory, also for rows that ran before it was recorded) gives the TSPQ − direct difference
    with no pick on the dev set."""
    import json

    import common

    def run(name, *stages):  # stages: the per-epoch dev scores of each stage, in order
        for i, curve in enumerate(stages):
            d = tmp_path / name / "stages" / f"{i + 1:02d}-s{i}" / "metrics"
            d.mkdir(parents=True)
            for step, v in enumerate(curve, 1):
                (d / f"eval-step{step:06d}.json").write_text(json.dumps({"step": step, "eval_pearson": v}))
        return str(tmp_path / name)

    assert tspq_fair.final_stage_curve(tmp_path / "gone", "pearson") is None
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    res = common.Results("fair_test", "test")
    rows = {"stsb/tspq_w2a8/seed42": run("t42", [0.9, 0.8], [0.70]),
            "stsb/direct_w2a8/seed42": run("d42", [0.60, 0.75, 0.65]),
            "stsb/tspq_w2a8/seed43": run("t43", [0.9], [0.72]),
            "stsb/direct_w2a8/seed43": run("d43", [0.70, 0.74, 0.66])}
    for key, run_dir in rows.items():
        task, config, seed = key.split("/")
        curve = tspq_fair.final_stage_curve(Path(run_dir), "pearson")
        res.data["rows"][key] = {"task": task, "config": config, "seed": int(seed[4:]), "score": max(curve),
                                 "primary_metric": "pearson", "run_dir": run_dir}
    res.data["rows"]["stsb/adopted/seed42"] = {**res.data["rows"]["stsb/tspq_w2a8/seed42"], "config": "adopted",
                                               "same_run_as": "stsb/tspq_w2a8/seed42"}
    assert tspq_fair.backfill_curves(res) == 5 and tspq_fair.backfill_curves(res) == 0
    got = res.data["rows"]
    assert got["stsb/tspq_w2a8/seed42"]["final_stage_curve"] == [0.70]  # the last stage only
    assert got["stsb/adopted/seed42"]["final_stage_curve"] == [0.70]    # from its twin's run
    lines = report._targets(got, ["stsb"], {"stsb": 0.86}, {"stsb": 0.0})
    # best epoch: 0.70 − 0.75 and 0.72 − 0.74 → −3.5 ± 1.5; last epoch: 0.70 − 0.65, 0.72 − 0.66 → +5.5 ± 0.5
    assert "tspq_w2a8 − direct_w2a8 on the 1-task average (6 epochs each): -3.50 ± 1.50" in lines
    assert "each row's last epoch instead of its best" in lines and ": +5.50 ± 0.50" in lines
    # a curve that is not the row's own (its score is none of the curve's points) is dropped
    got["stsb/tspq_w2a8/seed43"]["final_stage_curve"] = [0.5, 0.6]
    assert report.curve_of(got["stsb/tspq_w2a8/seed43"]) is None
    assert tspq_fair.backfill_curves(res) == 1 and got["stsb/tspq_w2a8/seed43"]["final_stage_curve"] == [0.72]
    res.data["rows"]["stsb/tspq_w2a8/seed43"]["run_dir"] = str(tmp_path / "gone")  # and no directory to read again
    got["stsb/tspq_w2a8/seed43"]["final_stage_curve"] = [0.5, 0.6]
    assert tspq_fair.backfill_curves(res) == 1 and "final_stage_curve" not in got["stsb/tspq_w2a8/seed43"]
    assert "each row's last epoch" not in report._targets(got, ["stsb"], {"stsb": 0.86}, {"stsb": 0.0})


def test_a_floor_miss_is_read_against_the_teacher_and_the_best_row(tmp_path, monkeypatch):
    """MRPC's majority class scores F1 81.2 against a teacher's 85.7: the line under a miss gives
    the bar as a share of the teacher's score (F1 and accuracy), the best row on the task and the
    best binary-weight stage with full-precision activations."""
    import json

    (tmp_path / "teacher_glue.json").write_text(json.dumps({"rows": {"mrpc": {"metrics": {"accuracy": 0.8}}}}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)

    def row(config, seed, *stages):  # stages: (w_bits, a_bits, f1, accuracy)
        st = [{"w_bits": w, "a_bits": a, "f1": f, "accuracy": acc} for w, a, f, acc in stages]
        return {"task": "mrpc", "config": config, "seed": seed, "primary_metric": "f1", "score": st[-1]["f1"],
                "stages": st}

    rows = {"a": row("tspq_w1a1", 42, (2, 32, 0.83, 0.75), (1, 32, 0.82, 0.74), (1, 1, 0.80, 0.69)),
            "b": row("tspq_w1a1", 43, (2, 32, 0.83, 0.75), (1, 32, 0.81, 0.73), (1, 1, 0.82, 0.70)),
            "c": row("direct_w2a8", 42, (2, 8, 0.845, 0.77))}
    floor_f1 = 0.8122
    lines = report._floor_reach(rows, ["mrpc"], {"mrpc": 0.857}, {"mrpc": floor_f1})
    assert lines[0] == ("mrpc f1: the floor + 3 bar is 84.2 against the teacher's 85.7 (the bar is 98.3% of it); "
                        "the best row reached 84.5 (direct_w2a8, seed 42), the W1A1 rows' binary-weight stage "
                        "at full-precision activations 82.0")
    # floor accuracy 68.4 (from F1: p / (2 − p)) + 3 = 71.4 against 80.0; the W1A1 mean 69.5 misses it
    assert lines[1].startswith("mrpc accuracy: the floor + 3 bar is 71.4 against the teacher's 80.0 (the bar is 89.2%")
    assert lines[1].endswith("stage at full-precision activations 74.0") and len(lines) == 2
    # with the dev set's size, the accuracy line says how far chance alone reaches: p = 0.684 over
    # 408 examples, 2 · sqrt(p (1 − p) / 408) = 4.6 points
    sized = report._floor_reach(rows, ["mrpc"], {"mrpc": 0.857}, {"mrpc": floor_f1}, {"mrpc": 408})
    assert sized[0] == lines[0]
    assert sized[1] == lines[1] + ("; 408 dev examples, so a classifier blind to its input lands up to "
                                   "4.6 points (2σ) above the floor by chance")
    # a row set that clears the bar gets no line
    clear = {"a": row("tspq_w1a1", 42, (1, 1, 0.86, 0.76))}
    assert report._floor_reach(clear, ["mrpc"], {"mrpc": 0.857}, {"mrpc": floor_f1}) == []


def test_the_page_renders_before_any_current_row(tmp_path, monkeypatch):
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    res = common.Results("fair_empty", "test")
    assert report.render(res).endswith("No rows yet.\n")


def test_a_progressive_row_is_followed_stage_by_stage():
    """Each stage's score as % of the teacher's average over every task (seeds averaged per task);
    a config missing a task gets no line, nor does a one-stage baseline."""
    def row(config, task, seed, *scores):
        return {"task": task, "config": config, "seed": seed, "primary_metric": "accuracy",
                "stages": [{"stage": n, "accuracy": v} for n, v in zip(("w4", "w2", "w2a8"), scores)]}

    rows = {"a": row("tspq_w2a8", "rte", 42, 0.6, 0.5, 0.4), "b": row("tspq_w2a8", "rte", 43, 0.6, 0.7, 0.6),
            "c": row("tspq_w2a8", "sst2", 42, 0.9, 0.8, 0.8), "d": row("direct_w2a8", "rte", 42, 0.5),
            "e": row("direct_w2a8", "sst2", 42, 0.5), "f": row("tspq_w1a1", "rte", 42, 0.5, 0.5)}
    lines = report._stage_lines(rows, ["rte", "sst2"], {"rte": 0.6, "sst2": 0.9})
    # w4 (0.6 + 0.9) / 1.5 = 100%; w2 (0.6 + 0.8) / 1.5 = 93.3%; w2a8 (0.5 + 0.8) / 1.5 = 86.7%
    assert lines == ["tspq_w2a8 after each stage, % of the teacher's average: w4 100.0% → w2 93.3% → w2a8 86.7%"]


def test_what_da_buys_is_read_seed_against_seed_with_its_cost():
    """Each DA row against the same config without DA and the same seed, per task; a task only the
    plain row has is left out, and the cost sums both rows' steps (every stage's: a row may augment
    only some of them) and minutes over those tasks."""
    def row(config, task, seed, score, steps, seconds):
        return {"task": task, "config": config, "seed": seed, "score": score, "wall_time_s": seconds,
                "stages": [{"steps": 100}, {"steps": steps - 100}]}

    rows = {f"{t}/{c}/seed{s}": row(c, t, s, *v) for (t, c, s), v in {
        ("rte", "tspq_w1a1_full_attention", 42): (0.57, 400, 600),
        ("rte", "tspq_w1a1_full_attention", 43): (0.56, 400, 600),
        ("stsb", "tspq_w1a1_full_attention", 42): (0.55, 600, 600),
        ("mrpc", "tspq_w1a1_full_attention", 42): (0.80, 500, 600),
        ("rte", "tspq_w1a1_da_full_attention", 42): (0.52, 2000, 3000),
        ("stsb", "tspq_w1a1_da_full_attention", 42): (0.72, 3000, 4800)}.items()}
    assert report._da_lines(rows, ["rte", "mrpc", "stsb"], "tspq_w1a1_da", "tspq_w1a1") == []
    lines = report._da_lines(rows, ["rte", "mrpc", "stsb"], "tspq_w1a1_da_full_attention", "tspq_w1a1_full_attention")
    # (2000 + 3000) / (400 + 600) = 5.0x; (3000 + 4800) / 1200 = 6.5x
    assert lines == ["tspq_w1a1_da_full_attention − tspq_w1a1_full_attention, seed against seed (42): rte -5.0, "
                     "stsb +17.0; mean +6.00 points over 2 task(s), for 5.0x the training steps (all stages) and "
                     "6.5x the wall minutes"]
    rows["rte/tspq_w1a1_full_attention/seed42"]["stages"] = []  # a row without its stages: no step ratio
    assert report._da_lines(rows, ["rte", "stsb"], "tspq_w1a1_da_full_attention",
                            "tspq_w1a1_full_attention")[0].endswith("for 6.5x the wall minutes")


def test_w1a1_both_ways_share_the_stages_before_binary_attention(tmp_path, monkeypatch):
    """quant.attention binarizes only at a_bits 1, so a full-attention W1A1 row starts from the W2,
    W1 and W1A2 stages its binary-attention twin trained (their dev scores were bit-equal)."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    res = common.Results("fair_test", "test")

    def recipe(config):
        overrides = configs.overrides_for("rte", config, 42, 4)
        return overrides, load_recipe(RECIPES / configs.CONFIGS[config][0], overrides)

    binary, res.data["rows"]["rte/tspq_w1a1/seed42"] = _finished_rte_row(tmp_path / "binary", "tspq_w1a1")
    full = recipe("tspq_w1a1_full_attention")[1]
    assert configs.fingerprint(full) != configs.fingerprint(binary)
    got = tspq_fair.reuse_stages(res, full, "rte", 42, tmp_path / "full")
    assert got == {"from": "rte/tspq_w1a1/seed42", "stages": 3}
    # and so do the DA rows both ways
    da, da_full = recipe("tspq_w1a1_da")[1], recipe("tspq_w1a1_da_full_attention")[1]
    assert [configs.fingerprint(da, k) == configs.fingerprint(da_full, k) for k in (1, 2, 3, 4)] == [
        True, True, True, False]
    # the ternary recipe has no a_bits-1 stage: its whole-recipe fingerprint still holds the setting
    ternary = load_recipe(RECIPES / "ternary.yaml")
    assert configs.fingerprint(ternary) != configs.fingerprint(load_recipe(RECIPES / "ternary.yaml",
                                                                               ["quant.attention=binary"]))


@pytest.mark.parametrize("before", ["stale", "interrupted"])
def test_a_stale_row_retrains_only_the_stages_its_recipe_changed(tmp_path, monkeypatch, before):
    """binary-da.yaml changed its W1A1 stage only: the stale tspq_w1a1_da row's run is replaced by
    the W2, W1 and W1A2 stages a current row trained with the same settings, and resumes after
    them, instead of training all four again. So is an interrupted run that finished fewer of those
    stages than the other row (here W2 only, W1 half-way)."""
    import json

    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(tspq_fair, "WORK", tmp_path / "work")
    monkeypatch.setattr(tspq_fair, "REPO", tmp_path)  # run directories are recorded relative to it
    (tmp_path / "recipes").symlink_to(RECIPES.parent)
    monkeypatch.setattr(tspq_fair, "render", lambda res: "")
    monkeypatch.setattr(tspq_fair, "require_teacher", lambda task: tmp_path / "teacher")
    res = common.Results("fair_test", "test")
    _, res.data["rows"]["rte/tspq_w1a1_da_full_attention/seed42"] = _finished_rte_row(
        tmp_path / "full", "tspq_w1a1_da_full_attention")
    out = tmp_path / "work" / "tspq_fair" / "rte" / "tspq_w1a1_da" / "seed42"
    if before == "stale":
        (out / "stages" / "04-w1a1").mkdir(parents=True)  # the stale run's last stage: not kept
        res.data["rows"]["rte/tspq_w1a1_da/seed42"] = {
            "task": "rte", "config": "tspq_w1a1_da", "seed": 42, "recipe_fingerprint": "an-old-one",
            "date": "2026-12-07", "score": 0.52, "stages": []}
    else:
        (out / "stages" / "01-w2").mkdir(parents=True)
        (out / "stages" / "01-w2" / "result.json").write_text(json.dumps({"accuracy": 0.5}))
        (out / "stages" / "02-w1" / "checkpoints").mkdir(parents=True)
    calls = []

    def run_recipe(recipe, **kw):
        calls.append(kw)
        return {"primary_metric": "accuracy", "teacher": {"accuracy": 0.6},
                "stages": [{"stage": "w1a1", "accuracy": 0.55, "size_mb": 6.0, "train_examples": 2490,
                            "wall_time_s": 60.0}]}

    monkeypatch.setattr(tspq_fair, "run_recipe", run_recipe)
    tspq_fair.run_row(res, "rte", "tspq_w1a1_da", 42, 4, None, redo=False)
    assert calls and calls[0]["resume"] is True and calls[0]["overwrite"] is False
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-w2", "02-w1", "03-w1a2"]
    new = res.data["rows"]["rte/tspq_w1a1_da/seed42"]
    assert new["stages_reused_from"] == {"from": "rte/tspq_w1a1_da_full_attention/seed42", "stages": 3}
    assert new["score"] == 0.55
    if before == "stale":
        assert res.data["superseded"]["rte/tspq_w1a1_da/seed42@2026-12-07"]["score"] == 0.52
    # a run that has finished as many stages as the other row could give keeps its own
    calls.clear()
    del res.data["rows"]["rte/tspq_w1a1_da/seed42"]
    tspq_fair.run_row(res, "rte", "tspq_w1a1_da", 42, 4, None, redo=False)
    assert "stages_reused_from" not in res.data["rows"]["rte/tspq_w1a1_da/seed42"]
    assert calls[0]["resume"] is True


def _finished_rte_row(run_dir: Path, config: str):
    """(recipe, row): a current RTE row of ``config`` (seed 42) whose run in ``run_dir`` finished
    every stage (each with its result.json)."""
    import json

    overrides = configs.overrides_for("rte", config, 42, 4)
    recipe = load_recipe(RECIPES / configs.CONFIGS[config][0], overrides)
    row = {"task": "rte", "config": config, "seed": 42, "recipe": f"recipes/tspq/{configs.CONFIGS[config][0]}",
           "overrides": overrides, "recipe_fingerprint": configs.fingerprint(recipe), "primary_metric": "accuracy",
           "run_dir": str(run_dir), "stages": []}
    for i, st in enumerate(recipe.stages):
        d = tspq_fair.stage_dir(run_dir, i, st.name)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"accuracy": 0.5 + i / 100}))
        row["stages"].append({"stage": st.name, "accuracy": 0.5 + i / 100})
    return recipe, row
