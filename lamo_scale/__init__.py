"""lamo_scale: LaMo (pre-trained LM backbones for offline RL) as a distributed training system."""
__version__ = "0.1.0"
