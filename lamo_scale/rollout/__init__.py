"""Rollouts: batched acting over vector envs, checkpoint evaluation, rollout workers."""
