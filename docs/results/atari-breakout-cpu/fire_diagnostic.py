"""Does a trained Breakout policy predict FIRE where the data fires? (issue 15)

    cd <the sweep dir> && python docs/results/atari-breakout-cpu/fire_diagnostic.py <checkpoint dir> [...]

For each checkpoint: the share of FIRE in the data's actions, and the policy's softmax P(FIRE) and
arg-max over 300 FIRE-labelled dataset windows (the first 300) and 300 others (drawn with seed 0),
fp32. Action indices (Breakout's minimal set): 0 NOOP, 1 FIRE, 2 RIGHT, 3 LEFT.
"""
import os
import sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np, torch
torch.set_num_threads(2)
from lamo_scale import checkpoint as ckpt
from lamo_scale.rollout.evaluate import load_policy
from lamo_scale.data.trajectories import open_dataset, load_trajectories
from lamo_scale.data.segments import gather_segments
ds = open_dataset("lamo/breakout/tracker-mixed-v0")
for ref in sys.argv[1:]:
    pol, cfg = load_policy(ckpt.resolve_checkpoint(ref), bf16=False)
    idx = load_trajectories(ds, cfg.data.rtg_scale)
    acts = idx.actions.argmax(1)
    fire = np.flatnonzero(acts == 1)
    rng = np.random.default_rng(0)
    other = rng.choice(np.flatnonzero(acts != 1), 300, replace=False)
    print(ref.split("/")[-3], "data FIRE share", round(len(fire) / len(acts), 4), "n", len(fire))
    for name, ends in (("FIRE-labelled", fire[:300]), ("other", other)):
        probs = []
        with torch.no_grad():
            for s in range(0, len(ends), 100):
                b = gather_segments(idx, ends[s:s + 100], cfg.data.context_len)
                logits = pol.predict_actions(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["attention_mask"])[:, -1].float()
                probs.append(torch.softmax(logits, -1).numpy())
        p = np.concatenate(probs)
        print(f"  {name}: mean P(FIRE) {p[:, 1].mean():.3f}, argmax==FIRE {np.mean(p.argmax(1) == 1):.3f}, argmax hist {np.bincount(p.argmax(1), minlength=4)}")
