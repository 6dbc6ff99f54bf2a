"""Which state encoder and action head a dataset's spaces need, and refusing what cannot be encoded.

Observations: a vector ``Box`` (or a ``Dict`` of them, flattened) goes through the MLP/linear
embedding (``model.state_encoder=mlp``); uint8 frames (``H x W``, ``C x H x W`` such as Atari's
4 stacked 84x84 grey frames, or ``H x W x C`` such as Minari's 210x160x3 RGB ``atari/*`` data)
through the Nature-DQN CNN (``cnn``). Actions: a ``Box`` is regressed (MSE), a ``Discrete`` is
classified (cross-entropy over one-hot actions). :func:`resolve_model_io` turns the ``auto``
settings into concrete ones before the policy is built, so the checkpoint's config holds
them and evaluation rebuilds the same policy.
"""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from lamo_scale.config import ConfigError, ModelConfig

CNN_MIN_SIZE = 36
"""Smallest frame side the Nature CNN (kernels 8/4/3, strides 4/2/1) leaves a pixel of."""


class UnsupportedSpaceError(ConfigError):
    """A dataset's observation or action space that the policy cannot encode, with how to fix it."""


def image_layout(shape) -> tuple[int, int, int, bool]:
    """``(channels, height, width, channels_last)`` of a frame shape; UnsupportedSpaceError if none fits."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return 1, shape[0], shape[1], False
    if len(shape) == 3 and shape[0] <= 4:
        return shape[0], shape[1], shape[2], False
    if len(shape) == 3 and shape[-1] <= 4:
        return shape[2], shape[0], shape[1], True
    raise UnsupportedSpaceError(f"frames of shape {shape}: the channel axis must be first or last with at most 4 "
                                "channels (C x H x W or H x W x C), or frames H x W")


def is_image_space(space: gym.Space) -> bool:
    """uint8 frames of 2 (H, W) or 3 (C, H, W / H, W, C) dimensions: what the CNN state encoder reads."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def _is_vector(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Dict):
        return all(_is_vector(sub) for sub in space.spaces.values())
    return isinstance(space, gym.spaces.Box) and not is_image_space(space)


def check_spaces(observation_space: gym.Space, action_space: gym.Space, dataset_id: str) -> str:
    """The encoder a dataset's observations need (``mlp`` or ``cnn``); refuses spaces no policy can encode."""
    where = f"dataset {dataset_id}"
    if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise UnsupportedSpaceError(
            f"{where} has action space {action_space}: LaMo policies predict continuous (Box) or discrete "
            "(Discrete) actions. Convert the data (e.g. a MultiDiscrete to one Discrete) or use another dataset.")
    if is_image_space(observation_space):
        channels, height, width, _ = image_layout(observation_space.shape)
        if min(height, width) < CNN_MIN_SIZE:
            raise UnsupportedSpaceError(
                f"{where} has {height}x{width} frames ({observation_space}): the Nature-DQN CNN state encoder "
                f"needs at least {CNN_MIN_SIZE}x{CNN_MIN_SIZE}. Resize the frames when collecting (the Atari "
                "recipes store 84x84) or store them as float vectors for the mlp encoder.")
        return "cnn"
    if _is_vector(observation_space):
        return "mlp"
    raise UnsupportedSpaceError(
        f"{where} has observation space {observation_space}, which the policy cannot encode: supported are "
        "vector Box spaces and Dicts of them (model.state_encoder=mlp) and uint8 frames H x W, C x H x W or "
        "H x W x C (model.state_encoder=cnn). Convert the observations when collecting the data.")


def resolve_model_io(cfg: ModelConfig, observation_space: gym.Space, action_space: gym.Space,
                     dataset_id: str) -> ModelConfig:
    """``cfg`` with ``state_encoder``, ``actions`` and ``observation_shape`` set for the dataset's spaces.

    Refuses (UnsupportedSpaceError, before any model is built) an encoder that cannot read the
    observations: ``cnn`` on vectors, ``mlp`` on frames.
    """
    needed = check_spaces(observation_space, action_space, dataset_id)
    if cfg.state_encoder not in ("auto", needed):
        kind = "uint8 image frames" if needed == "cnn" else "vector observations"
        raise UnsupportedSpaceError(
            f"model.state_encoder={cfg.state_encoder} cannot encode dataset {dataset_id}: it has {kind} "
            f"({observation_space}). Set model.state_encoder={needed} (or auto, which picks it from the data).")
    actions = "discrete" if isinstance(action_space, gym.spaces.Discrete) else "continuous"
    if cfg.actions not in ("auto", actions):
        raise UnsupportedSpaceError(
            f"model.actions={cfg.actions} but dataset {dataset_id} has {actions} actions ({action_space}); "
            f"set model.actions={actions} or auto.")
    shape = list(observation_space.shape) if needed == "cnn" else None
    if cfg.observation_shape is not None and shape is not None and list(cfg.observation_shape) != shape:
        raise UnsupportedSpaceError(f"model.observation_shape={cfg.observation_shape} but dataset {dataset_id} "
                                    f"has frames of shape {shape}; leave model.observation_shape unset")
    return dataclasses.replace(cfg, state_encoder=needed, actions=actions, observation_shape=shape)
