"""A GPT-2-XL-shaped backbone (48 x 1600, 1.56 B parameters) under ZeRO-3 + CPU parameter offload:
two training steps and a save at 2 ranks on this box, against the same run in one process.

    .venv/bin/python bench/bench_large_backbone.py --backbone /tmp/gpt2-xl --make-backbone \
        --out bench/results/large_backbone-cpu.json | tee bench/results/large_backbone-cpu.txt

What runs, through the real entry points (``lamo_scale.train``, the trainer's own save, the
evaluation loader), on the quickstart's recipe with the backbone replaced:

1. ``--make-backbone`` writes a random-init GPT-2-XL-shaped checkpoint (config + fp32
   safetensors in 2 GB shards, as a hub checkpoint is laid out) to ``--backbone``;
2. ``single``: ``python -m lamo_scale.train`` in one process, ``train.steps=2``;
3. ``zero3_offload``: ``accelerate launch --config_file
   ds_configs/accelerate_deepspeed_zero3_offload.yaml --num_processes 2 -m lamo_scale.train``
   with the same settings (gloo, 1 thread per rank): the backbone built inside ``zero.Init``,
   each rank reading only its partitions, parameters and optimizer state offloaded, the
   trainable tensors gathered on rank 0 for the save;
4. both checkpoints reloaded in this process (``rollout.evaluate.load_policy``, the path
   ``lamo-scale evaluate`` takes) and acted on the same dataset windows.

Printed: per-process peak RSS (polled every 0.2 s over the launcher's process tree), wall
time, the loss of each step (MLflow ``train/loss``) for both runs, and the largest action
difference between the two reloaded checkpoints (bar: 1e-4). Dropout is 0 and the run is fp32
so the two runs compute the same thing; the data is ``lamo/reacher2d/medium-v1`` (collected
here if missing, 2,000 steps).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.offline_env()

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GPT2_XL = dict(arch="gpt2", layers=48, width=1600, heads=25, vocab=50257)
DATASET = "lamo/reacher2d/medium-v1"
GiB = 2 ** 30


def overrides(backbone: str, out_dir: Path, uri: str, name: str, threads: int) -> list[str]:
    """The quickstart recipe on ``backbone``, 2 fp32 steps, no dropout, a checkpoint at step 2."""
    return ["--config", "quickstart", f"model.backbone={backbone}", "model.dtype=float32", "model.lora.dropout=0",
            "model.backbone_dropout=0", "train.mixed_precision=no", "train.steps=2", "train.batch_size=4",
            "train.checkpoint_every=2", "train.log_every=1", "train.warmup_steps=1", f"train.threads={threads}",
            "text.batch_size=2", "text.block_size=32", f"data.dataset={DATASET}", f"tracking.uri={uri}",
            "tracking.experiment=large-backbone", f"tracking.run_name={name}", f"train.output_dir={out_dir / name}"]


def run_watched(cmd: list[str], env: dict) -> tuple[int, float, dict[int, int], str]:
    """Run ``cmd``; return its exit code, wall seconds, peak RSS per process of its tree, output tail."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    out_lines: list[str] = []
    reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    reader.join(timeout=10)
    tail = "".join(out_lines).replace("\r", "\n")[-3000:]
    return proc.returncode, time.perf_counter() - t0, peaks, tail


def losses(uri: str, name: str) -> list[float]:
    """``train/loss`` per step of the run named ``name``."""
    from mlflow import MlflowClient

    from lamo_scale.tracking import metric_history

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("large-backbone")
    run = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    return [m.value for m in metric_history(client, run.info.run_id, "train/loss")]


def reloaded_actions(run_dir: Path, windows: dict):
    """Actions of a run's last checkpoint, reloaded in this one process as ``lamo-scale evaluate`` does."""
    import torch

    from lamo_scale import checkpoint as ckpt
    from lamo_scale.rollout.evaluate import load_policy

    policy, _ = load_policy(ckpt.resolve_checkpoint(run_dir))
    with torch.inference_mode():
        actions = policy.act(**windows)
    del policy
    return actions


def main() -> None:
    """Make the backbone, run both contenders, reload both checkpoints, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="local checkpoint dir of the GPT-2-XL-shaped backbone")
    ap.add_argument("--make-backbone", action="store_true", help="write a random-init one there if missing")
    ap.add_argument("--work", default="/tmp/lamo_bench_large", help="run dirs and the MLflow store")
    ap.add_argument("--modes", default="single,zero3_offload",
                    help="single, and 2-rank modes named by their ds_configs/accelerate_deepspeed_<mode>.yaml (zero3, zero3_offload)")
    ap.add_argument("--layers", type=int, default=GPT2_XL["layers"],
                    help="blocks of the made backbone (GPT-2-XL width; fewer to bisect memory at a smaller size)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra recipe overrides for every contender (e.g. loss.language_weight=0)")
    ap.add_argument("--timeout", type=int, default=3000)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    import torch

    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    backbone, work = Path(args.backbone), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.make_backbone and not (backbone / "config.json").is_file():
        from lamo_scale.model.sharded import write_random_backbone

        t = time.perf_counter()
        write_random_backbone(backbone, **dict(GPT2_XL, layers=args.layers), max_shard_size="2GB")
        print(f"wrote a random-init GPT-2-XL-shaped checkpoint to {backbone} in {time.perf_counter() - t:.0f} s")
    from lamo_scale.model.sharded import SafetensorsDir

    n_params = sum(t.numel for t in SafetensorsDir(backbone).tensors.values())
    print(f"backbone {backbone}: {n_params / 1e9:.3f} B parameters (fp32 {4 * n_params / GiB:.2f} GiB)", flush=True)
    import minari

    if DATASET not in minari.list_local_datasets():
        subprocess.run([str(VENV_BIN / "lamo-scale"), "collect", "--recipe", "reacher2d-medium", "--steps", "2000"],
                       check=True, cwd=REPO)
    uri = f"sqlite:///{work}/mlflow.db"
    rows = []
    for mode in args.modes.split(","):
        threads = 2 if mode == "single" else 1
        launcher = ([sys.executable, "-m", "lamo_scale.train"] if mode == "single" else
                    [str(VENV_BIN / "accelerate"), "launch", "--config_file",
                     f"ds_configs/accelerate_deepspeed_{mode}.yaml", "--num_processes", "2",
                     "-m", "lamo_scale.train"])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
        name = f"{mode}-{int(time.time())}"
        code, wall, peaks, tail = run_watched(launcher + overrides(str(backbone), work, uri, name, threads) + args.set, env)
        if code != 0:
            print(f"[{mode}] FAILED (exit {code}) after {wall:.0f} s:\n{tail}", flush=True)
            continue
        ranks = sorted(peaks.values(), reverse=True)[: (1 if mode == "single" else 2)]
        row = {"mode": mode, "name": name, "wall_s": wall, "peak_rss_per_rank_gib": [r / GiB for r in ranks],
               "peak_rss_sum_gib": sum(peaks.values()) / GiB, "losses": losses(uri, name)}
        rows.append(row)
        print(f"[{mode}] {wall:.0f} s; peak RSS per rank {', '.join(f'{r:.2f}' for r in row['peak_rss_per_rank_gib'])} "
              f"GiB; losses {row['losses']}", flush=True)
    from lamo_scale.data.segments import gather_segments
    from lamo_scale.data.trajectories import load_trajectories, open_dataset

    index = load_trajectories(open_dataset(DATASET), rtg_scale=10)
    windows = gather_segments(index, torch.arange(4, 400, 25).numpy(), 5)
    actions = {r["mode"]: reloaded_actions(work / r["name"], windows) for r in rows}
    diff = None
    if {"single", "zero3_offload"} <= set(actions):
        diff = float((actions["single"] - actions["zero3_offload"]).abs().max())
        loss_diff = max(abs(a - b) for a, b in zip(rows[0]["losses"], rows[1]["losses"]))
        print(f"reloaded in one process: max |action(single) - action(zero3_offload)| = {diff:.2e} over "
              f"{len(windows['states'])} windows (bar 1e-4); max loss difference {loss_diff:.2e}")
    print("\n| mode | ranks | peak RSS per rank (GiB) | × single | wall s | loss step 1 | loss step 2 |")
    print("|---|---|---|---|---|---|---|")
    single = next((r for r in rows if r["mode"] == "single"), None)
    for r in rows:
        ratio = max(r["peak_rss_per_rank_gib"]) / max(single["peak_rss_per_rank_gib"]) if single else float("nan")
        print(f"| {r['mode']} | {len(r['peak_rss_per_rank_gib'])} | "
              f"{' / '.join(f'{x:.2f}' for x in r['peak_rss_per_rank_gib'])} | {ratio:.2f} | {r['wall_s']:.0f} | "
              + " | ".join(f"{x:.6f}" for x in r["losses"]) + " |")
    _common.save_json(args.out, {"machine": info, "n_params": n_params, "rows": rows, "max_action_diff": diff})


if __name__ == "__main__":
    main()
