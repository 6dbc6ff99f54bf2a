"""``lamo-scale``: collect data, train, evaluate, list datasets and recipes, run the quickstart.

    lamo-scale quickstart                       # data → train → evaluate → results table
    lamo-scale collect --recipe reacher2d-medium --steps 20000
    lamo-scale datasets
    lamo-scale train --config quickstart train.steps=200
    lamo-scale baseline --algo iql --dataset lamo/hopper/medium-v0 --steps 5000
    lamo-scale evaluate --checkpoint runs/quickstart/<run>/ --episodes 20
    lamo-scale rollout --tracking-uri http://127.0.0.1:5000 --experiment quickstart --workers 2 --watch
    lamo-scale report --experiment quickstart --plot curves.png
    lamo-scale recipes
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

log = logging.getLogger("lamo_scale")


DEVICE_HELP = ("cpu, cuda[:N], or auto: spread a large frozen backbone over every GPU of this node "
               "(accelerate device_map='auto'), embeddings and heads on the first")


def _table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    def fmt(v):
        if isinstance(v, dict):
            return " ".join(f"{k}={fmt(x)}" for k, x in v.items()) or "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_train(argv: list[str]) -> int:
    """``lamo-scale train``: same flags as ``accelerate launch -m lamo_scale.train``."""
    from lamo_scale.train import main

    return main(argv, prog="lamo-scale train")


def cmd_baseline(argv: list[str]) -> int:
    """``lamo-scale baseline``: train BC / CQL / IQL / TD3+BC (d3rlpy) on a LaMo run's data, evaluate, log."""
    from lamo_scale.baselines.train import main

    return main(argv, prog="lamo-scale baseline")


def cmd_collect(args: argparse.Namespace) -> int:
    """``lamo-scale collect``: write a Minari dataset from a built-in collection recipe."""
    from lamo_scale.data.collect import COLLECT_RECIPES, collect_recipe

    if args.list or not args.recipe:
        rows = [{"recipe": name, "dataset id": r.dataset_id, "env": r.env_id, "policy": r.policy,
                 "steps": r.num_steps} for name, r in sorted(COLLECT_RECIPES.items())]
        print(_table(rows, ["recipe", "dataset id", "env", "policy", "steps"]))
        return 0 if args.list else 2
    ds = collect_recipe(args.recipe, num_steps=args.steps, num_envs=args.num_envs, seed=args.seed,
                        dataset_id=args.dataset_id, zoo_dir=args.zoo_dir, overwrite=args.overwrite)
    print(f"wrote Minari dataset {ds.id}: {ds.total_episodes} episodes, {ds.total_steps} steps")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """``lamo-scale datasets``: the local Minari datasets with their behaviour-data scores."""
    from lamo_scale.data.collect import dataset_report
    from lamo_scale.data.trajectories import dataset_store_root

    rows = dataset_report(args.ids or None)
    print(f"Minari store: {dataset_store_root()}")
    if not rows:
        print("no datasets yet: lamo-scale collect --list shows how to make some")
        return 0
    print(_table(rows, list(rows[0].keys())))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``lamo-scale evaluate``: roll a checkpoint out and log its scores to its MLflow run."""
    from lamo_scale.rollout.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, num_envs=args.num_envs,
                                 target_returns=args.targets, seed=args.seed, device=args.device,
                                 log_to_mlflow=not args.no_mlflow, bf16=True if args.bf16 else None)
    print(results_table(report))
    return 0


def results_table(report) -> str:
    """The evaluation summary as a table: one row per target return (and why, when there is no
    normalised score)."""
    rows = [{"target": t, "normalized_score": s.get("normalized_score", float("nan")),
             "return_mean": s["return_mean"], "return_std": s["return_std"],
             "episode_length": s["episode_length"], "episodes": int(s["episodes"])}
            for t, s in sorted(report.summaries.items())]
    table = f"checkpoint step {report.step}\n" + _table(
        rows, ["target", "normalized_score", "return_mean", "return_std", "episode_length", "episodes"])
    return table + (f"\n{report.note}" if report.note else "")


def cmd_rollout(args: argparse.Namespace) -> int:
    """``lamo-scale rollout``: worker processes that evaluate every checkpoint of a run or experiment."""
    from lamo_scale.rollout.worker import WorkerOptions, run_workers

    if not args.experiment and not args.run_id:
        print("error: give --experiment or --run-id", file=sys.stderr)
        return 2
    opts = WorkerOptions(tracking_uri=args.tracking_uri, experiment=args.experiment, run_id=args.run_id,
                         watch=args.watch, device=args.device, episodes=args.episodes, num_envs=args.num_envs,
                         targets=args.targets, poll_s=args.poll_s, lease_s=args.lease_s, settle_s=args.settle_s,
                         threads=args.threads, register=not args.no_registry,
                         **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    return run_workers(opts, args.workers)


def cmd_report(args: argparse.Namespace) -> int:
    """``lamo-scale report``: a table of every run of an experiment and a plot of their curves."""
    from lamo_scale.report import COLUMNS, experiment_report

    rows = experiment_report(args.tracking_uri, args.experiment, args.plot)
    print(_table(rows, COLUMNS) if rows else f"no runs in experiment {args.experiment}")
    print(f"plot: {args.plot}")
    if args.paper:
        from lamo_scale.paper_report import write_report

        md, png, _ = write_report(args.tracking_uri, args.experiment, args.paper, args.notes or "")
        print(f"paper-form report: {md} and {png} (also logged to the experiment's 'report' run)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """``lamo-scale recipes``: the packaged training recipes and the first line of each."""
    from lamo_scale.config import RECIPES_DIR, packaged_recipes

    for name in packaged_recipes() + packaged_recipes(baselines=True):
        lines = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()
        about = next((ln.strip("# ").strip() for ln in lines[1:] if ln.startswith("#")), "")
        print(f"{name:<40} {about}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """``lamo-scale quickstart``: make data if missing, train the quickstart recipe, evaluate, report."""
    from lamo_scale.config import load_config
    from lamo_scale.data.collect import COLLECT_RECIPES, behaviour_score, collect_recipe
    from lamo_scale.data.trajectories import DatasetNotFoundError, open_dataset
    from lamo_scale.rollout.evaluate import evaluate_checkpoint
    from lamo_scale.tracking import run_url
    from lamo_scale.train import setup_logging, train

    setup_logging()
    cfg = load_config(args.config, args.overrides)
    try:
        open_dataset(cfg.data.dataset)
    except DatasetNotFoundError:
        recipe = args.collect_recipe or next(
            (name for name, r in COLLECT_RECIPES.items() if r.dataset_id == cfg.data.dataset), None)
        if recipe is None:
            raise DatasetNotFoundError(f"{cfg.data.dataset} is missing and no collection recipe makes it; "
                                       "pass --collect-recipe (lamo-scale collect --list)")
        print(f"[1/3] collecting {cfg.data.dataset} with recipe {recipe} ({args.collect_steps} steps)")
        collect_recipe(recipe, num_steps=args.collect_steps, dataset_id=cfg.data.dataset)
    else:
        print(f"[1/3] dataset {cfg.data.dataset} already in the Minari store")
    print(f"[2/3] training recipe '{cfg.recipe}' for {cfg.train.steps} steps")
    result = train(cfg)
    print(f"[3/3] evaluating {result.checkpoint}")
    report = evaluate_checkpoint(result.checkpoint)
    print()
    print(results_table(report))
    behaviour = behaviour_score(cfg.data.dataset)
    if behaviour is not None:
        print(f"(for comparison, the behaviour data's own episodes score {behaviour:.1f} normalised; "
              f"the quickstart trains for minutes, the paper for 100k steps)")
    print()
    print(f"checkpoint: {result.checkpoint}")
    if result.run_id:
        print(f"MLflow: {run_url(cfg.tracking.uri, result.run_id)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``lamo-scale sweep``: expand a grid and run it (locally, one index, or as a Slurm array)."""
    import shutil
    import subprocess
    from pathlib import Path

    from lamo_scale.sweep import is_done, load_grid, run_local, run_one, run_states, slurm_array_script

    grid = load_grid(args.grid)
    if args.list:
        states = run_states(grid)
        rows = [{"index": i, "run": r.key, "state": states[r.key]} for i, r in enumerate(grid.runs)]
        print(_table(rows, ["index", "run", "state"]))
        return 0
    if args.index is not None:
        spec = grid.runs[args.index]
        if is_done(grid, run_states(grid)[spec.key]):
            print(f"{spec.key}: already done")
            return 0
        return run_one(grid, spec)
    if args.slurm:
        script = Path(args.slurm_script or f"sweep-{grid.name}.sbatch")
        script.write_text(slurm_array_script(args.grid, grid, args.partition, args.parallel))
        print(f"wrote {script}")
        if shutil.which("sbatch") and not args.dry_run:
            return subprocess.run(["sbatch", str(script)]).returncode
        return 0
    codes = run_local(grid, args.parallel, Path(args.log_dir))
    failed = {k: c for k, c in codes.items() if c != 0}
    print(f"sweep {grid.name}: ran {len(codes)}, failed {len(failed)}" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lamo-scale`` command line."""
    parser = argparse.ArgumentParser(prog="lamo-scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", add_help=False, help="train from a recipe (lamo-scale train --help lists every option)")
    sub.add_parser("baseline", add_help=False, help="train and evaluate an offline-RL baseline (bc, cql, iql, td3bc "
                   "through d3rlpy) on the same data as a LaMo run (lamo-scale baseline --help)")

    p = sub.add_parser("collect", help="write a Minari dataset by rolling out a behaviour policy")
    p.add_argument("--recipe", help="collection recipe name (see --list)")
    p.add_argument("--list", action="store_true", help="list the collection recipes")
    p.add_argument("--steps", type=int, help="transition budget (whole episodes are kept)")
    p.add_argument("--num-envs", type=int, default=8, help="parallel envs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of envs and policy noise")
    p.add_argument("--dataset-id", help="override the recipe's Minari dataset id")
    p.add_argument("--zoo-dir", help="folder of Stable-Baselines3 zoo policies (default: $LAMO_SB3_ZOO)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")

    p = sub.add_parser("datasets", help="list local Minari datasets with returns and normalised scores")
    p.add_argument("ids", nargs="*", help="only these dataset ids")

    p = sub.add_parser("evaluate", help="roll out a checkpoint and log scores to its MLflow run")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or run dir (its latest checkpoint)")
    p.add_argument("--episodes", type=int, help="episodes per target return (default: the recipe's)")
    p.add_argument("--num-envs", type=int, help="episodes run in parallel (default: the recipe's)")
    p.add_argument("--targets", type=float, nargs="+", help="target returns (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed of the evaluation episodes")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--bf16", action="store_true", help="act under bfloat16 autocast (default: as the policy was trained)")
    p.add_argument("--no-mlflow", action="store_true", help="print only; log nothing")

    p = sub.add_parser("rollout", help="worker processes that evaluate checkpoints as they appear in MLflow")
    p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI the trainer logs to")
    p.add_argument("--experiment", help="evaluate every run of this experiment")
    p.add_argument("--run-id", help="evaluate only this run")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--watch", action="store_true", help="keep polling until the runs end and all jobs are done")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--episodes", type=int, help="episodes per target (default: the recipe's)")
    p.add_argument("--num-envs", type=int, help="episodes run in parallel (default: the recipe's)")
    p.add_argument("--targets", type=float, nargs="+", help="target returns (default: the run's eval.target_returns)")
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between polls with --watch (default 10)")
    p.add_argument("--lease-s", type=float, default=60.0, help="claim lease; a dead worker's job reopens after it")
    p.add_argument("--settle-s", type=float, default=1.0, help="wait between writing a claim and re-reading it")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--cache-dir", help="where downloaded checkpoints go (default ~/.cache/lamo_scale/checkpoints)")
    p.add_argument("--no-registry", action="store_true", help="do not register best checkpoints as models")

    p = sub.add_parser("report", help="table of an experiment's runs and a plot of their evaluation curves")
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow tracking URI")
    p.add_argument("--plot", default="eval_curves.png", help="PNG to write (default eval_curves.png)")
    p.add_argument("--paper", metavar="OUT_DIR", help="also write the paper-form report (Markdown + PNG: task x "
                   "data ratio x variant, mean +- std over seeds) into OUT_DIR, e.g. docs/results/<name>")
    p.add_argument("--notes", help="text for the report's header (machine, time taken, what was cut)")

    sub.add_parser("recipes", help="list the packaged training recipes")

    p = sub.add_parser("sweep", help="run a grid of trainings (recipes x variants x axes) into one experiment")
    p.add_argument("--grid", required=True, help="grid YAML (see lamo_scale/sweep.py)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (local) or array throttle (Slurm)")
    p.add_argument("--list", action="store_true", help="show the expanded runs and their MLflow state")
    p.add_argument("--index", type=int, help="run only run number INDEX (what a Slurm array task calls)")
    p.add_argument("--slurm", action="store_true", help="write a job-array sbatch script and submit it")
    p.add_argument("--slurm-script", help="where to write the sbatch script")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--dry-run", action="store_true", help="with --slurm: write the script, do not submit")
    p.add_argument("--log-dir", default="runs/sweep-logs", help="per-run training logs (local runs)")

    p = sub.add_parser("quickstart", help="make a small real dataset, train, evaluate, print the results")
    p.add_argument("--config", default="quickstart", help="training recipe (default: quickstart)")
    p.add_argument("--collect-recipe", help="collection recipe if data is missing (default: the one that makes "
                   "the recipe's data.dataset)")
    p.add_argument("--collect-steps", type=int, default=20_000, help="transitions to collect if data is missing")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the training recipe")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``lamo-scale`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    if argv and argv[0] == "baseline":
        return cmd_baseline(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"collect": cmd_collect, "datasets": cmd_datasets, "evaluate": cmd_evaluate,
                "recipes": cmd_recipes, "quickstart": cmd_quickstart, "rollout": cmd_rollout,
                "report": cmd_report, "sweep": cmd_sweep}
    from lamo_scale.config import ConfigError
    from lamo_scale.data.trajectories import DatasetNotFoundError

    try:
        return handlers[args.command](args)
    except (ConfigError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
