"""``python -m lamo_scale.baselines``: the same as ``lamo-scale baseline`` (what sweeps run)."""
import sys

from lamo_scale.baselines.train import main

sys.exit(main(prog="python -m lamo_scale.baselines"))
