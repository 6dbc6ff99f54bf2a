"""State-token encoders: the embedding of vector states, or a CNN over uint8 frames.

``model.state_encoder=cnn`` is the Nature-DQN encoder the official LaMo/DT Atari code uses:
three convolutions (32, 64, 64 channels; kernels 8, 4, 3; strides 4, 2, 1; no padding) with
ReLUs, flattened, a linear map to the backbone width; frames are scaled from [0, 255] to [0, 1].
Under LaMo's MLP embedding it is followed by the same residual MLP block as the other tokens
(as the official code does); under DT's linear embedding the CNN is the whole encoder.
"""
from __future__ import annotations

import torch
from torch import nn

from lamo_scale.data.spaces import image_layout

NATURE_CHANNELS = (32, 64, 64)
NATURE_KERNELS = (8, 4, 3)
NATURE_STRIDES = (4, 2, 1)


class NatureCNN(nn.Module):
    """Frames ``[..., *frame_shape]`` (uint8 or float in [0, 255]) -> features ``[..., out_dim]``."""

    def __init__(self, frame_shape, out_dim: int):
        """``frame_shape``: C x H x W, H x W x C or H x W (see :func:`image_layout`)."""
        super().__init__()
        self.frame_shape = tuple(int(d) for d in frame_shape)
        channels, height, width, self.channels_last = image_layout(self.frame_shape)
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in zip(NATURE_CHANNELS, NATURE_KERNELS, NATURE_STRIDES):
            layers += [nn.Conv2d(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(channels * height * width, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode every frame of a ``[..., *frame_shape]`` batch."""
        lead = frames.shape[: frames.dim() - len(self.frame_shape)]
        x = frames.reshape(-1, *self.frame_shape).to(self.fc.weight.dtype) / 255.0
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        return self.fc(self.conv(x)).reshape(*lead, -1)


def make_state_encoder(encoder: str, embedding: nn.Module | None, frame_shape, hidden: int) -> nn.Module:
    """The state token's encoder: ``embedding`` itself (mlp), or the CNN followed by ``embedding`` (cnn).

    ``embedding`` is the token embedding of the chosen kind mapping ``hidden`` features (cnn) or the
    state vector (mlp) to the backbone width; for cnn + linear embedding pass None (the CNN's own
    linear output is the token).
    """
    if encoder != "cnn":
        return embedding
    if frame_shape is None:
        raise ValueError("model.state_encoder=cnn needs model.observation_shape (set from the dataset)")
    cnn = NatureCNN(frame_shape, hidden)
    return cnn if embedding is None else nn.Sequential(cnn, embedding)
