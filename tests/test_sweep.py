"""Sweeps: grid expansion, tags, validation, and resuming a half-done sweep without redoing runs."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from lamo_scale.config import ConfigError, load_config
from lamo_scale.data.collect import behaviour_score
from lamo_scale.paper_report import compare
from lamo_scale.sweep import is_done, load_grid, pending_runs, run_local, run_one, run_states, slurm_array_script

from conftest import REPO, TINY


def write_grid(tmp_path, dataset, **extra):
    overrides = TINY + [f"data.dataset={dataset}", "train.steps=3", "train.batch_size=4", "train.checkpoint_every=3",
                        "loss.language_weight=0", "train.threads=1", "eval.episodes=1", "eval.num_envs=1",
                        "eval.target_returns=[50]"]
    lines = [f"experiment: sweep-test", f"tracking_uri: sqlite:///{tmp_path}/mlflow.db",
             "recipes: [quickstart-tiny]", "variants: {lamo: [], dt: [ablations/dt]}",
             "axes: {data.data_ratio: [0.5, 1.0]}", f"output_dir: {tmp_path}/runs/{{run_name}}",
             "overrides: [" + ", ".join(f"'{o}'" for o in overrides) + "]"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "grid.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_paper_main_grid_expands_to_the_issue_grid():
    grid = load_grid(REPO / "lamo_scale" / "sweeps" / "paper-main.yaml")
    assert len(grid.runs) == 3 * 4 * 2 * 3
    keys = {r.key for r in grid.runs}
    assert "paper-hopper-medium-r1-lamo-dt-data_ratio0.01-seed2" in keys
    spec = next(r for r in grid.runs if r.key == "paper-walker2d-medium-r1-lamo-no-language-data_ratio0.1-seed1")
    cfg = load_config(spec.recipes, spec.overrides)
    assert cfg.loss.language_weight == 0 and cfg.data.data_ratio == 0.1 and cfg.train.seed == 1
    assert cfg.model.backbone == "smollm2-135m" and cfg.tracking.experiment == "lamo-paper-main"
    assert cfg.tracking.tags["variant"] == "no-language" and cfg.tracking.tags["axis.train.seed"] == "1"
    dt = load_config(*[(r.recipes, r.overrides) for r in grid.runs if r.tags["variant"] == "dt"][0])
    assert (dt.model.finetune, dt.model.pretrained, dt.model.embedding) == ("full", False, "linear")


def test_bad_grids_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes: [quickstart-tiny]\nsweeep: 1\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_grid(bad)
    bad.write_text("recipes: [quickstart-tiny]\naxes: {train.stpes: [1]}\n")
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load_grid(bad)


def test_slurm_array_script(tmp_path, reacher_dataset):
    path = write_grid(tmp_path, reacher_dataset)
    script = slurm_array_script(path, load_grid(path), partition="cpu", max_parallel=2)
    assert "#SBATCH --array=0-3%2" in script and "--index \"$SLURM_ARRAY_TASK_ID\"" in script


@pytest.mark.slow
def test_half_done_sweep_resumes_without_redoing_runs(tmp_path, reacher_dataset):
    path = write_grid(tmp_path, reacher_dataset)
    grid = load_grid(path)
    assert len(grid.runs) == 4
    assert run_one(grid, grid.runs[0]) == 0  # "interrupted" after one run
    states = run_states(grid)
    assert states[grid.runs[0].key] == "EVALUATED" and list(states.values()).count("missing") == 3
    codes = run_local(grid, parallel=1, log_dir=tmp_path / "logs")
    assert sorted(codes) == sorted(r.key for r in grid.runs[1:]) and set(codes.values()) == {0}
    assert all(is_done(grid, s) for s in run_states(grid).values())
    assert run_local(grid) == {}  # nothing left to do
    client = MlflowClient(tracking_uri=grid.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
    assert len(runs) == 4
    for run in runs:
        tags = run.data.tags
        assert tags["sweep"] == "grid" and tags["variant"] in ("lamo", "dt")
        assert tags["axis.data.data_ratio"] in ("0.5", "1.0") and tags["sweep.key"] == run.info.run_name
        assert client.get_metric_history(run.info.run_id, "eval/50/normalized_score")

    # The paper-form report from this real sweep: every number comes from the MLflow metrics.
    from lamo_scale.paper_report import write_report
    md, png, scores = write_report(grid.tracking_uri, "sweep-test", tmp_path / "report", notes="tiny test sweep")
    assert png.stat().st_size > 1000 and len(scores) == 4
    text = md.read_text()
    assert "| task | data ratio | lamo | dt |" in text and "D4RL-like" not in text  # test/ data is not lamo/-made
    assert "- `dt`: the paper's Decision Transformer: GPT-2 architecture, 3 layers, width 128" in text
    assert f"`{reacher_dataset}` {behaviour_score(reacher_dataset):.1f}." in text  # behaviour reference
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "eval/50/normalized_score")
        last = sorted(history, key=lambda m: m.step)[-1].value  # one checkpoint: last 20 % = it
        tags = run.data.tags
        match = [s for s in scores if s.variant == tags["variant"] and s.ratio == tags["axis.data.data_ratio"]]
        assert len(match) == 1 and match[0].score == pytest.approx(last) and match[0].best_target == "50"
        cell = f"{last:.1f} ± 0.0 (n=1)"
        assert cell in text
    for ratio in ("0.5", "1.0"):  # the claims table: LaMo minus DT, from the same MLflow numbers
        by_variant = {s.variant: s.score for s in scores if s.ratio == ratio}
        diff = by_variant["lamo"] - by_variant["dt"]
        side = "ahead" if diff > 0 else "behind" if diff < 0 else "level"
        assert (f"| {ratio} | a pre-trained LM backbone beats Decision Transformer (dt) | {diff:+.1f} | "
                f"— | LaMo {side} (one seed: no error bar) |") in text
    assert any(r.data.tags.get("report") == "true" for r in client.search_runs(
        [client.get_experiment_by_name("sweep-test").experiment_id]))


def test_cpu_grid_is_the_paper_grid_cut_to_reacher2d_two_seeds_and_runs_seed_major():
    grid = load_grid(REPO / "lamo_scale" / "sweeps" / "paper-main-cpu.yaml")
    assert len(grid.runs) == 4 * 2 * 2
    order = pending_runs(grid, {r.key: "missing" for r in grid.runs})
    seeds = [r.tags["axis.train.seed"] for r in order]
    assert seeds == ["0"] * 8 + ["1"] * 8
    assert [r.tags["variant"] for r in order[:8]] == ["lamo"] * 2 + ["dt"] * 2 + ["random-init"] * 2 + ["no-language"] * 2
    done = {r.key: ("EVALUATED" if r.wave == 0 else "missing") for r in grid.runs}
    assert [r.wave for r in pending_runs(grid, done)] == [1] * 8
    cfg = load_config(order[0].recipes, order[0].overrides)
    assert (cfg.model.backbone, cfg.data.context_len, cfg.eval.episodes, cfg.train.steps) == ("smollm2-135m", 5, 20, 240)


def test_claim_verdicts_follow_welchs_t_test_at_five_percent():
    diff, se, threshold, verdict = compare([30.0, 32.0, 31.0], [20.0, 21.0, 19.0])
    # equal variances (1.0) and n=3 a side: Welch df = 4, t(0.975, 4) = 2.776
    assert diff == pytest.approx(11.0) and se == pytest.approx((2 / 3) ** 0.5)
    assert threshold == pytest.approx(2.7764451 * (2 / 3) ** 0.5, rel=1e-6) and verdict == "LaMo ahead"
    assert compare([20.0, 21.0, 19.0], [30.0, 32.0, 31.0])[3] == "LaMo behind"
    assert compare([30.0, 20.0, 25.0], [24.0, 26.0, 25.0])[3] == "no clear difference"
    # two seeds a side: +3.6 +- 1.1 passes a 2-SE rule but not the t-test (df ~ 1.6)
    assert compare([34.15, 34.9], [31.9, 29.9])[3] == "no clear difference"
    assert compare([30.0], [31.0])[3] == "LaMo behind (one seed: no error bar)"
