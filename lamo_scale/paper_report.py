"""The paper's results table from a sweep's MLflow experiment: task × data ratio × variant.

Score of one run (the paper's rule): for every target return, the mean normalised score over
the last 20 % of its evaluated checkpoints; the run's score is the best of those. A cell is
mean ± std over the seeds of that (task, data ratio, variant). Learning curves: per (task,
ratio), each variant's seed-mean normalised score at its best target, vs training step.
The report says which datasets were made here (D4RL-like) rather than canonical D4RL files.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lamo_scale.scoring import RULE, counts_as_seed, run_score
from lamo_scale.rollout.plots import eval_curves

VARIANT_ORDER = ["lamo", "dt", "cql", "iql", "td3bc", "bc", "random-init", "no-language", "linear-embedding",
                 "full-finetune", "frozen"]

BASELINES = ("cql", "iql", "td3bc", "bc")
"""The offline-RL comparators of the paper's tables (lamo_scale.baselines, trained through d3rlpy)."""

# What each variant is, in plain words (printed under the table).
VARIANT_NAMES = {
    "lamo": "LaMo: the pre-trained backbone, frozen + LoRA, MLP embeddings and head, language loss",
    "dt": "the paper's Decision Transformer: GPT-2 architecture, 3 layers, width 128, 1 head, random init, "
          "every weight trained, linear embeddings and tanh head, no language loss",
    "random-init": "LaMo on its own backbone architecture randomly initialised (not the paper's DT)",
    "no-language": "LaMo without the language loss",
    "linear-embedding": "LaMo with linear embeddings",
    "full-finetune": "LaMo with every backbone weight trained instead of LoRA",
    "frozen": "LaMo with the backbone fully frozen (no LoRA)",
    "cql": "Conservative Q-Learning (d3rlpy CQL, its published D4RL settings: recipes/baselines/cql.yaml)",
    "iql": "Implicit Q-Learning (d3rlpy IQL, its published D4RL settings: recipes/baselines/iql.yaml)",
    "td3bc": "TD3+BC (d3rlpy TD3PlusBC, its published D4RL settings: recipes/baselines/td3bc.yaml)",
    "bc": "behaviour cloning (d3rlpy BC, d3rlpy's defaults: recipes/baselines/bc.yaml)",
}

# What the paper claims each comparison with LaMo shows (LaMo ahead of the variant).
CLAIMS = {
    "dt": "a pre-trained LM backbone beats Decision Transformer",
    "random-init": "pre-training matters (LaMo beats the same model from random init)",
    "no-language": "the auxiliary language loss helps",
    "linear-embedding": "MLP embeddings beat linear ones",
    "full-finetune": "LoRA on a frozen backbone beats full fine-tuning",
    "frozen": "LoRA beats a fully frozen backbone",
    "cql": "LaMo beats CQL",
    "iql": "LaMo beats IQL",
    "td3bc": "LaMo beats TD3+BC",
    "bc": "LaMo beats behaviour cloning",
}


@dataclass
class RunScore:
    """One run's identity (from sweep tags) and its score by the paper's rule."""

    task: str
    ratio: str
    variant: str
    seed: str
    score: float
    best_target: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    dataset: str = ""


def collect_scores(tracking_uri: str, experiment: str) -> list[RunScore]:
    """Every FINISHED, evaluated run of the experiment with its sweep tags and score (lamo_scale.scoring)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    out = []
    for run in client.search_runs([exp.experiment_id], max_results=10000):
        if not counts_as_seed(run):
            continue
        tags, params = run.data.tags, run.data.params
        curves = eval_curves(client, run.info.run_id, run.data.metrics)
        if not curves:
            continue
        score, target = run_score(curves)
        out.append(RunScore(task=tags.get("task", tags.get("recipe", "?")),
                            ratio=tags.get("axis.data.data_ratio", params.get("data.data_ratio", "?")),
                            variant=tags.get("variant", "?"),
                            seed=tags.get("axis.train.seed", params.get("train.seed", "?")),
                            score=score, best_target=target, curve=sorted(curves[target]),
                            dataset=tags.get("dataset", "")))
    return out


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def compare(lamo: list[float], other: list[float]) -> tuple[float, float, float, str]:
    """``(difference of means, its standard error, 95 % threshold, verdict)`` of LaMo minus a variant.

    Welch's two-sided t-test at 5 %: the verdict says "LaMo ahead" / "LaMo behind" only when the
    difference exceeds ``t(0.975, Welch df) x SE`` (the threshold), else "no clear difference".
    With one seed on a side there is no error bar and the verdict says so (threshold NaN).
    """
    from scipy.stats import t as student_t

    diff = statistics.fmean(lamo) - statistics.fmean(other)
    side = "ahead" if diff > 0 else "behind" if diff < 0 else "level"
    if min(len(lamo), len(other)) < 2:
        return diff, math.nan, math.nan, f"LaMo {side} (one seed: no error bar)"
    a, b = statistics.variance(lamo) / len(lamo), statistics.variance(other) / len(other)
    se = math.sqrt(a + b)
    if se == 0:
        return diff, 0.0, 0.0, "no clear difference" if diff == 0 else f"LaMo {side}"
    df = (a + b) ** 2 / (a ** 2 / (len(lamo) - 1) + b ** 2 / (len(other) - 1))
    threshold = float(student_t.ppf(0.975, df)) * se
    return diff, se, threshold, f"LaMo {side}" if abs(diff) > threshold else "no clear difference"


def _cells(scores: list[RunScore]) -> tuple[dict[tuple[str, str], dict[str, list[float]]], list[str]]:
    """Seed scores by ``(task, ratio)`` then variant, and the variants present in table order."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in scores:
        cells[(s.task, s.ratio)][s.variant].append(s.score)
    present = {v for row in cells.values() for v in row}
    return cells, [v for v in VARIANT_ORDER if v in present] + sorted(present - set(VARIANT_ORDER))


def claims(scores: list[RunScore]) -> list[str]:
    """Markdown table: for every (task, ratio) and every variant beside LaMo, the paper's claim and whether it held."""
    cells, variants = _cells(scores)
    lines = ["| task | data ratio | claim | LaMo − variant (± SE) | 95 % threshold | verdict |",
             "|---|---|---|---|---|---|"]
    for (task, ratio), by_variant in sorted(cells.items()):
        if "lamo" not in by_variant:
            continue
        for variant in [v for v in variants if v in by_variant and v != "lamo"]:
            diff, se, threshold, verdict = compare(by_variant["lamo"], by_variant[variant])
            err, bar = ("", "—") if math.isnan(se) else (f" ± {se:.1f}", f"{threshold:.1f}")
            claim = CLAIMS.get(variant, f"LaMo beats {variant}")
            lines.append(f"| {task} | {ratio} | {claim} ({variant}) | {diff:+.1f}{err} | {bar} | {verdict} |")
    return lines if len(lines) > 2 else []


def table(scores: list[RunScore]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the task × ratio × variant table (mean ± std over seeds)."""
    cells, variants = _cells(scores)
    header = ["task", "data ratio", *variants]
    rows = [[task, ratio, *[_fmt(cells[(task, ratio)].get(v, [])) for v in variants]]
            for task, ratio in sorted(cells)]
    return header, rows


def markdown(scores: list[RunScore], experiment: str, notes: str = "",
             behaviour: Optional[dict[str, float]] = None) -> str:
    """The report as Markdown: the table, the paper's claims checked, the datasets, and the per-run scores.

    ``behaviour``: dataset id -> normalised score of the dataset's own episodes, shown for
    reference (a policy that merely imitates the data scores about that).
    """
    header, rows = table(scores)
    lines = [f"# Results: {experiment}", "",
             f"Normalised score (D4RL normalisation), {RULE}; mean ± std over seeds (population std, "
             "as numpy's std).", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- `{v}`: {VARIANT_NAMES[v]}" for v in header[2:] if v in VARIANT_NAMES]
    if any(v in BASELINES for v in header[2:]):
        lines += ["", "Baselines (`lamo-scale baseline`) train on the same data-ratio subset and normalised states, "
                  "and are evaluated by the same rollouts (envs, seeds, episodes); they are not conditioned on a "
                  "return, so their one evaluation per checkpoint is logged under target 0."]
    claim_lines = claims(scores)
    if claim_lines:
        lines += ["", "## The paper's claims on this data", "",
                  "LaMo's mean minus the variant's, ± its standard error; a verdict other than "
                  "\"no clear difference\" needs the gap to pass Welch's two-sided t-test at 5 % (the "
                  "threshold is t(0.975, Welch df) × SE: with 2 seeds a side it is 4–13 SE).", ""] + claim_lines
    if behaviour:
        lines += ["", "Behaviour data (the datasets' own episodes, normalised, all episodes): "
                  + ", ".join(f"`{d}` {v:.1f}" for d, v in sorted(behaviour.items())) + "."]
    made_here = sorted({s.dataset for s in scores if s.dataset.startswith("lamo/")})
    if made_here:
        lines += ["", "Datasets made by `lamo-scale collect` (D4RL-like: same envs and normalisation, not the "
                  "canonical D4RL files; `medium-replay-like` is a mixture of weaker policies): "
                  + ", ".join(f"`{d}`" for d in made_here) + "."]
    lines += ["", "## Runs", "", "| task | ratio | variant | seed | score | best target |", "|---|---|---|---|---|---|"]
    for s in sorted(scores, key=lambda s: (s.task, s.ratio, s.variant, s.seed)):
        lines.append(f"| {s.task} | {s.ratio} | {s.variant} | {s.seed} | {s.score:.2f} | {s.best_target} |")
    return "\n".join(lines) + "\n"


def plot(scores: list[RunScore], path: str | Path) -> Path:
    """Learning curves: one panel per (task, ratio), one line per variant (seed mean at its best target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], dict[str, list[list[tuple[int, float]]]]] = defaultdict(lambda: defaultdict(list))
    for s in scores:
        groups[(s.task, s.ratio)][s.variant].append(s.curve)
    n = max(1, len(groups))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, ((task, ratio), variants) in zip(axes.flat, sorted(groups.items())):
        for variant, curves in sorted(variants.items()):
            steps = sorted({step for c in curves for step, _ in c})
            means = [statistics.fmean([dict(c)[s] for c in curves if s in dict(c)]) for s in steps]
            ax.plot(steps, means, marker="o", label=variant)
        ax.set_title(f"{task} (ratio {ratio})", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(tracking_uri: str, experiment: str, out_dir: str | Path, notes: str = "",
                 log_to_mlflow: bool = True) -> tuple[Path, Path, list[RunScore]]:
    """Write ``report.md`` and ``curves.png`` to ``out_dir`` and log both to a ``report`` run."""
    from lamo_scale.data.collect import behaviour_score

    scores = collect_scores(tracking_uri, experiment)
    behaviour = {d: b for d in sorted({s.dataset for s in scores if s.dataset})
                 if (b := behaviour_score(d)) is not None}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(scores, experiment, notes, behaviour))
    png = plot(scores, out_dir / "curves.png")
    if log_to_mlflow:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.create_run(exp_id, run_name="report", tags={"report": "true"})
        client.log_artifact(run.info.run_id, str(md), "report")
        client.log_artifact(run.info.run_id, str(png), "report")
        client.set_terminated(run.info.run_id)
    return md, png, scores
