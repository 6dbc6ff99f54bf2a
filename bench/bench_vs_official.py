"""Training step side by side: the official LaMo code vs lamo_scale, one interleaved run.

    nice -n 10 .venv/bin/python bench/bench_vs_official.py --threads 2 --repeats 2 \
        --out bench/results/vs_official-cpu.json | tee bench/results/vs_official-cpu.txt

Official side: ../shared/anchors/LaMo-2023/experiment-d4rl (MIT), run *unmodified apart from the
offline changes* in its own virtual environment (created once under --venv: python -m venv,
``pip install torch==2.13.0`` first so no CUDA wheels come in, then transformers==4.31.0,
loralib, numpy, gymnasium[mujoco]). The script copies the code to a temp dir and patches it
programmatically: the unused ``timm`` import in ``utils.py`` is removed, and
``GPT2Config_LoRA.from_pretrained("gpt2")`` / ``GPT2LMHeadModel_LoRA.from_pretrained`` become a
hand-built GPT-2 small config (12 x 768 x 12, vocab 50257) with random init. The env and text
changes are not needed: the step is fed synthetic batches (below), not D4RL or WikiText.
A driver (written to the temp dir) builds ``DecisionTransformer`` as ``experiment.py`` does for
the paper's LaMo run (run_cotrain.sh: ``--adapt_mode --adapt_embed --lora --mlp_embedding
--co_training --co_lambda 0.1``, lr 1e-4, lm lr 1e-5, wd 1e-5, dropout 0.1, attn_pdrop 0.1,
LoRA r 16 / alpha 32 on c_attn, ``get_optimizer`` AdamW) and times ``SequenceTrainer.train_step``
(forward, backward, clip 0.25, AdamW step). It serves one step per request over stdin/stdout
so that its steps interleave with lamo_scale's in the same run. ``official λ0`` sets
``co_training`` off: the official ``train_step`` still runs the LM forward on the text batch
(its loss is just not added), so it still pays for the 50257-way logits.

lamo_scale side: ``lamo_scale.model.policy.build_policy`` with the model section of the real
recipe ``paper/hopper-medium-r1-lamo`` on a random-init GPT-2-small directory written to a
temp dir (config.json + a placeholder tokenizer: the bench feeds token ids directly), timed
with ``bench_train_step.Contender`` (forward, backward, clip 0.25, AdamW). λ 0.1 with a
2 x 1024 text batch and λ 0 (no text, no LM forward), fp32, and bf16 as a bf16 recipe runs it
(frozen base stored in bf16, ``model.dtype=bfloat16``; LoRA and heads fp32; bf16 autocast). The
recipe's ``model.attn_implementation=blocked_sdpa`` applies (``--attn sdpa`` for the old path).

Data: both sides get the *same* synthetic Hopper-shaped batch (state 11, action 3, batch 64,
K 20, a quarter left-padded; ``bench_train_step.make_batch``) and the same random 2 x 1024 token
ids in [0, 50257): no dataset is needed for a training step, so none is read.

FLOP per step (printed): N = transformer-block weights (85.0 M), H = LM head 50257 x 768,
T_rl = 3·K·batch = 3840 tokens in 64 sequences of 60, T_txt = 2048 tokens in 2 sequences
of 1024. Frozen backbone + LoRA: forward 2·N·T + backward through the activations 2·N·T, so
  λ>0: 4·N·T_rl + 12·L·d·60²·64 + 4·(N+H)·T_txt + 12·L·d·1024²·2
  λ=0: 4·N·T_rl + 12·L·d·60²·64
(attention 4·L·d·T² forward per sequence, backward twice that). Both sides are credited the
same task work: lamo_scale forwards 59 of the 60 tokens (the last action token predicts nothing),
so its "of peak" slightly overstates its matmul rate. The official λ0 step also
runs the text forward, 2·(N+H)·T_txt + 4·L·d·1024²·2, which is counted for it as work done.
"Of peak" = FLOP / s / the best 2048² matmul rate of the same dtype measured in this run.
Ratios are against the official fp32 co-training step (λ 0.1) for λ 0.1 contenders and against
the official fp32 λ0 step for λ 0 contenders, as issue 12's bars are.

Not done here: the evaluation-loop comparison (official ``evaluate_episode_rtg`` on Hopper-v5
vs ``rollout.acting.run_episodes``); see bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_train_step as bts  # noqa: E402  (sets the offline env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "anchors" / "LaMo-2023" / "experiment-d4rl"
LAYERS, WIDTH, HEADS, VOCAB = 12, 768, 12, 50257
TEXT_SHAPE = (2, 1024)
OFFICIAL_PACKAGES = ["transformers==4.31.0", "loralib==0.1.1", "numpy<2", "gymnasium[mujoco]"]

DRIVER = r'''
import json, sys, time
import torch
code_dir, data_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, code_dir)
torch.set_num_threads(threads)
import loralib as lora
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.training.seq_trainer import SequenceTrainer
from utils import get_optimizer

data = torch.load(data_path)
variant = dict(pretrained_lm="gpt2", lora=True, mlp_embedding=True, adapt_mode=True, adapt_embed=True,
               adapt_ln=False, adapt_attn=False, adapt_ff=False, adapt_wte=False, adapt_wpe=False,
               only_adapt_last_two_blocks=False, adapt_last_two_blocks=False, embed_dim=768, n_layer=12,
               n_head=12, activation_function="relu", dropout=0.1, learning_rate=1e-4, lm_learning_rate=1e-5,
               weight_decay=1e-5, warmup_steps=2500, co_training=True, co_lambda=0.1, extend_positions=False,
               share_input_output_proj=False, fp16=False)
torch.manual_seed(0)
b = data["batch"]
K = b["states"].shape[1]
model = DecisionTransformer(args=variant, state_dim=11, act_dim=3, max_length=K, max_ep_len=1000,
                            hidden_size=768, n_layer=12, n_head=12, n_inner=4 * 768,
                            activation_function="relu", n_positions=1024, resid_pdrop=0.1,
                            attn_pdrop=0.1, mlp_embedding=True)
lora.mark_only_lora_as_trainable(model, bias="lora_only")
for name, p in model.named_parameters():
    if "embed" in name or "predict" in name:
        p.requires_grad = True
optimizer = get_optimizer(args=variant, model=model)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / 2500, 1))
mask = b["attention_mask"]
rtg = torch.cat([b["returns_to_go"], b["returns_to_go"][:, -1:]], dim=1)
batch = (b["states"], b["actions"], torch.zeros_like(b["returns_to_go"]), torch.zeros_like(mask),
         rtg, b["timesteps"], mask)
text = data["text"]
nlp = [dict(input_ids=text, attention_mask=torch.ones_like(text), labels=text)]
trainer = SequenceTrainer(args=variant, model=model, optimizer=optimizer, batch_size=K,
                          get_batch=lambda n: batch, train_nlp_dataset=nlp, eval_nlp_dataset=nlp,
                          scheduler=scheduler,
                          loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2))
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
total = sum(p.numel() for p in model.parameters())
print(json.dumps({"ready": True, "trainable": trainable, "total": total}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    variant["co_training"] = bool(req["co_training"])
    model.train()
    t0 = time.perf_counter()
    loss = trainer.train_step()
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "loss": loss}), flush=True)
'''


def ensure_official_venv(venv: Path) -> Path:
    """Create (once) the official code's venv: torch 2.13.0 CPU first, then its imports."""
    py = venv / "bin" / "python"
    marker = venv / ".lamo_bench_ready"
    if marker.exists():
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pin = next(l.strip() for l in (ROOT / "constraints.txt").read_text().splitlines()
                     if l.startswith("torch=="))
    subprocess.run(pip + [torch_pin], check=True)  # first: nothing later may pull CUDA torch
    subprocess.run(pip + [torch_pin] + OFFICIAL_PACKAGES, check=True)
    marker.write_text("ok\n")
    return py


def patched_official_copy(dest: Path) -> Path:
    """Copy experiment-d4rl to ``dest`` and apply the offline changes the step needs."""
    code = dest / "experiment-d4rl"
    shutil.copytree(OFFICIAL, code)
    utils = code / "utils.py"
    utils.write_text(utils.read_text().replace("import timm.optim.optim_factory as optim_factory\n", ""))
    dt = code / "decision_transformer" / "models" / "decision_transformer.py"
    src = dt.read_text()
    hand_config = ("GPT2Config_LoRA(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, "
                   "n_positions=1024)")
    src, n1 = re.subn(r'GPT2Config_LoRA\.from_pretrained\(args\["pretrained_lm"\]\)', hand_config, src)
    src, n2 = re.subn(r'GPT2LMHeadModel_LoRA\.from_pretrained\(\s*args\["pretrained_lm"\],\s*config=config\s*\)',
                      "GPT2LMHeadModel_LoRA(config)", src)
    if (n1, n2) != (1, 1):
        raise RuntimeError(f"could not patch the official model ({n1}, {n2})")
    dt.write_text(src)
    return code


class OfficialStep:
    """The official training step in its own process; one step per ``step()`` call."""

    def __init__(self, py: Path, code: Path, data_path: Path, threads: int, co_training: bool, name: str):
        self.name, self.precision, self.co_training = name, "fp32", co_training
        self.times: list[float] = []
        self.losses: list[float] = []
        self.proc = None
        self._shared = None
        self._spawn = (py, code, data_path, threads)

    def share(self, other: "OfficialStep") -> None:
        """Use ``other``'s process (one model; only ``co_training`` differs)."""
        self._shared = other

    def _process(self):
        if self._shared is not None:
            return self._shared._process()
        if self.proc is None:
            py, code, data_path, threads = self._spawn
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), TRANSFORMERS_OFFLINE="1")
            self.proc = subprocess.Popen([str(py), str(code.parent / "driver.py"), str(code), str(data_path),
                                          str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, env=env, cwd=str(code))
            self.info = self._read(self.proc)
        return self.proc

    @staticmethod
    def _read(proc) -> dict:
        for line in proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"official driver exited ({proc.wait()})")

    def step(self) -> float:
        """One official train_step; returns its seconds as measured inside the driver."""
        proc = self._process()
        proc.stdin.write(json.dumps({"co_training": self.co_training}) + "\n")
        proc.stdin.flush()
        out = self._read(proc)
        self.losses.append(out["loss"])
        return out["seconds"]

    def close(self) -> None:
        """End the driver process."""
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def gpt2_small_dir(dest: Path) -> Path:
    """A random-init GPT-2-small backbone directory: config.json and a placeholder tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import GPT2Config, PreTrainedTokenizerFast

    d = dest / "gpt2-small-random"
    GPT2Config(n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB).save_pretrained(d)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  unk_token="<unk>", eos_token="<unk>")
    tok.save_pretrained(d)
    return d


def flops(with_lm: bool, k: int, batch: int, n: int, head: int, lm_forward_only: bool = False) -> float:
    """FLOP per step by the module docstring's formula."""
    f = 4 * n * 3 * k * batch + bts.attention_flops(LAYERS, WIDTH, 3 * k, batch)
    text = TEXT_SHAPE[0] * TEXT_SHAPE[1]
    lm = 4 * (n + head) * text + bts.attention_flops(LAYERS, WIDTH, TEXT_SHAPE[1], TEXT_SHAPE[0])
    if with_lm:
        f += lm
    elif lm_forward_only:
        f += lm / 2
    return f


def build_lamo_side(backbone: Path, batch: dict, text: torch.Tensor, k: int, seed: int,
                    extra: tuple[str, ...] = (), precisions: tuple[str, ...] = ("fp32", "bf16")) -> list:
    """The lamo_scale contenders (λ 0.1 / 0 for each of ``precisions``) from the paper recipe, one
    policy per precision (``extra``: further recipe overrides)."""
    from lamo_scale.config import load_config
    from lamo_scale.model.policy import build_policy

    out = []
    for precision in precisions:
        # bf16 as the product runs it: the frozen base stored in bf16 (model.dtype), trainable
        # weights in fp32, the step under bf16 autocast (Contender).
        dtype = "bfloat16" if precision == "bf16" else "float32"
        cfg = load_config("paper/hopper-medium-r1-lamo",
                          [f"model.backbone={backbone}", "model.pretrained=false", f"model.dtype={dtype}", *extra])
        policy, _ = build_policy(cfg.model, bts.STATE_DIM, bts.ACT_DIM, -np.ones(bts.ACT_DIM), np.ones(bts.ACT_DIM),
                                 seed=seed)
        weight = float(cfg.loss.language_weight) or 0.1
        n = bts.block_params(policy.transformer.h)
        head = policy.causal_lm.get_output_embeddings().weight.numel()
        trainable, total = policy.parameter_counts()
        for with_lm in (True, False):
            def loss_fn(with_lm=with_lm, policy=policy, weight=weight):
                return policy(**batch, text_ids=text if with_lm else None,
                              language_weight=weight if with_lm else 0.0)["loss"]
            c = bts.Contender("lamo_scale λ0.1" if with_lm else "lamo_scale λ0", precision, policy, loss_fn,
                              flops(with_lm, k, batch["states"].shape[0], n, head), trainable, total)
            c.with_lm = with_lm
            out.append(c)
    return out, n, head, cfg


def run_rounds(contenders: list, repeats: int, warmup: int, peaks: dict) -> None:
    """Warm-up, then ``repeats`` rounds of one step each, order rotated; matmul peak between rounds."""
    for c in contenders:
        for _ in range(warmup):
            print(f"  warm-up {c.name} {c.precision}: {c.step():.2f} s", flush=True)
    for r in range(repeats):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            dt = c.step()
            c.times.append(dt)
            print(f"  round {r + 1} {c.name} {c.precision}: {dt:.2f} s", flush=True)
        for dtype in ("float32", "bfloat16"):
            peaks[dtype] = max(peaks[dtype], _common.matmul_peak(dtype, reps=3))


def result_rows(contenders: list, peaks: dict) -> list[dict]:
    """One row per contender: s/step, ratio to the matching official fp32 step, fraction of peak."""
    ref = {c.co_training: _common.median(c.times) for c in contenders if isinstance(c, OfficialStep)}
    rows = []
    for c in contenders:
        s = _common.median(c.times)
        lm = c.co_training if isinstance(c, OfficialStep) else c.with_lm
        peak = peaks["bfloat16" if c.precision == "bf16" else "float32"]
        rows.append({"contender": c.name, "prec": c.precision, "s_step": s, "steps": len(c.times),
                     "tflop": c.flops / 1e12, "of_peak": c.flops / s / peak,
                     "x_official": ref[lm] / s, "losses": c.losses})
    return rows


def main(argv=None) -> None:
    """Parse options, build both sides, run interleaved rounds, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "lamo_scale" / "official-venv")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context-len", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default=None, help="override the recipe's model.attn_implementation (e.g. sdpa)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    py = ensure_official_venv(args.venv)
    tmp = Path(tempfile.mkdtemp(prefix="lamo_vs_official_"))
    code = patched_official_copy(tmp)
    (tmp / "driver.py").write_text(DRIVER)
    batch = bts.make_batch(args.batch, args.context_len, args.seed)
    text = torch.randint(0, VOCAB, TEXT_SHAPE, generator=torch.Generator().manual_seed(args.seed + 7))
    torch.save({"batch": batch, "text": text}, tmp / "data.pt")
    peaks = {d: _common.matmul_peak(d) for d in ("float32", "bfloat16")}
    extra = (f"model.attn_implementation={args.attn}",) if args.attn else ()
    lamo, n, head, _ = build_lamo_side(gpt2_small_dir(tmp), batch, text, args.context_len, args.seed, extra)
    off_lm = OfficialStep(py, code, tmp / "data.pt", args.threads, True, "official λ0.1")
    off_0 = OfficialStep(py, code, tmp / "data.pt", args.threads, False, "official λ0 (LM fwd runs)")
    off_0.share(off_lm)
    off_lm.flops = flops(True, args.context_len, args.batch, n, head)
    off_0.flops = flops(False, args.context_len, args.batch, n, head, lm_forward_only=True)
    contenders = [off_lm] + lamo[:2] + [off_0] + lamo[2:]
    try:
        run_rounds(contenders, args.repeats, args.warmup, peaks)
    finally:
        off_lm.close()
    rows = result_rows(contenders, peaks)
    print(f"\nmatmul 2048² best in this run: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; threads {args.threads}; "
          f"batch {args.batch}, K {args.context_len}, text {TEXT_SHAPE[0]}x{TEXT_SHAPE[1]}, vocab {VOCAB}")
    print(_common.table(rows, [("contender", "contender"), ("prec", "prec"), ("s_step", "s/step"),
                               ("steps", "steps"), ("tflop", "TFLOP/step"), ("of_peak", "of peak"),
                               ("x_official", "x vs official fp32")]))
    _common.save_json(args.out, {"machine": info, "args": vars(args) | {"venv": str(args.venv)},
                                 "peaks": peaks, "rows": rows, "official_params": off_lm.info})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
