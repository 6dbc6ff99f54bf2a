"""Length-K segments ending at every step, streamed in a seeded order, sharded without overlap.

Order: epoch ``e`` is the permutation ``rng([seed, e]).permutation(N)`` of all N steps; the
stream is those permutations concatenated, ``g``. A segment *ends* at each sampled step, so
every step is an end point once per epoch and episodes are sampled in proportion to their
length. Rank ``r`` of ``W`` takes ``g[r], g[r + W], g[r + 2W], ...`` and cuts it into
micro-batches; DataLoader worker ``w`` of ``n`` produces micro-batches ``k ≡ w (mod n)``
(DataLoader hands batches out round-robin, so the order seen by the loop is unchanged).
Consequences the tests pin: ranks and workers never overlap; the number of workers does
not change the data; the union of the ranks' micro-batches for one step equals the batch
a single process would draw. The stream's position is one integer, the next micro-batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lamo_scale.data.trajectories import TrajectoryIndex


def window_offsets(end_pos: np.ndarray, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative offsets ``[K]`` (``-(K-1) .. 0``) and validity mask ``[B, K]`` of left-padded windows.

    ``end_pos`` is each window's last position inside its episode; positions before the
    episode start are padding (mask 0). Training and rollout both build windows with this.
    """
    offsets = np.arange(context_len, dtype=np.int64) - (context_len - 1)
    valid = (np.asarray(end_pos, np.int64)[:, None] + offsets[None, :]) >= 0
    return offsets, valid


def window_tensors(states: np.ndarray, actions: np.ndarray, rtg: np.ndarray, timesteps: np.ndarray,
                   valid: np.ndarray) -> dict[str, torch.Tensor]:
    """The model's input batch from gathered windows ``[B, K, ...]`` and their validity ``[B, K]``.

    Padding positions are zeroed in every field (states, actions, return-to-go, timestep) and
    masked out. The one place a window becomes tensors: training segments and rollout use it.
    States are ``[B, K, D]`` vectors (float32) or ``[B, K, *frame]`` uint8 frames, which stay uint8
    (a float copy of a batch of Atari windows is 4x larger; the CNN scales them itself).
    """
    mask = valid.astype(np.int64)
    fmask = valid[..., None].astype(np.float32)
    if states.dtype == np.uint8:
        frames_valid = valid.reshape(valid.shape + (1,) * (states.ndim - valid.ndim))
        state_tensor = torch.from_numpy(np.where(frames_valid, states, np.uint8(0)))
    else:
        state_tensor = torch.from_numpy((states * fmask).astype(np.float32))
    return {
        "states": state_tensor,
        "actions": torch.from_numpy((actions * fmask).astype(np.float32)),
        "returns_to_go": torch.from_numpy((rtg * valid)[..., None].astype(np.float32)),
        "timesteps": torch.from_numpy(np.ascontiguousarray(timesteps * mask)),
        "attention_mask": torch.from_numpy(mask),
    }


def gather_segments(index: TrajectoryIndex, ends: np.ndarray, context_len: int) -> dict[str, torch.Tensor]:
    """The batch of segments ending at flat steps ``ends`` (left-padded at episode starts)."""
    offsets, valid = window_offsets(index.episode_pos[ends], context_len)
    flat = np.where(valid, ends[:, None] + offsets[None, :], 0)
    return window_tensors(index.states[flat], index.actions[flat], index.rtg[flat], index.timesteps[flat], valid)


class SegmentStream(IterableDataset):
    """Endless micro-batches of segments for one rank; position = next micro-batch index."""

    def __init__(self, index: TrajectoryIndex, context_len: int, micro_batch: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_micro_batch: int = 0):
        """Stream ``micro_batch``-sized batches for ``rank`` of ``world_size``, from ``start_micro_batch``."""
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.index = index
        self.context_len = context_len
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_micro_batch = start_micro_batch
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.index.num_steps)
        return self._perms[epoch]

    def ends_for(self, micro_batch_index: int) -> np.ndarray:
        """Flat end steps of this rank's micro-batch number ``micro_batch_index``."""
        n = self.index.num_steps
        j = micro_batch_index * self.micro_batch + np.arange(self.micro_batch, dtype=np.int64)
        g = self.rank + self.world_size * j
        epochs, offsets = np.divmod(g, n)
        out = np.empty_like(g)
        for epoch in np.unique(epochs):
            perm = self._permutation(int(epoch))
            sel = epochs == epoch
            out[sel] = perm[offsets[sel]]
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start_micro_batch + worker
        while True:
            yield gather_segments(self.index, self.ends_for(k), self.context_len)
            k += num_workers
