"""The LaMo policy (Shi et al., 2023): a causal-LM backbone fed (R, s, a) token embeddings.

Tokens are interleaved per timestep as (return-to-go, state, action); as in the official
LaMo code, the embeddings are layer-normed and *then* the learned timestep embedding is
added, and the result is passed to the backbone's transformer via ``inputs_embeds`` with no
absolute position embedding (GPT-2's ``wpe`` is skipped for RL tokens, so left padding cannot
shift them; RoPE backbones see only relative positions). The tokens arrive at the scale of the
backbone's own token embeddings: the LayerNorm gain and the timestep embedding start at the
RMS of the backbone's input-embedding table (``model.input_scale``; a frozen LM fed inputs
several times larger than its embeddings is mostly bypassed by its residual stream). The action at step t is predicted from the hidden state at the state
token of step t (it has seen R_≤t, s_≤t, a_<t). The LM head stays for the language loss.
The Decision Transformer baseline is the same class with ``embedding=linear``,
``action_head=linear``, ``finetune=full``, ``pretrained=false`` and no language loss.

Image observations (Atari) change only the state token's encoder (``model.state_encoder=cnn``,
:mod:`lamo_scale.model.state_encoders`). Discrete actions (``model.actions=discrete``) arrive
one-hot, so the action token is the same embedding of a vector (through a linear embedding, a
one-hot is exactly an embedding-table row plus a bias); the head then outputs logits trained with
cross-entropy, and :meth:`LaMoPolicy.act` returns the one-hot of the arg-max action (the
official Atari code acts by arg-max). Unlike the official code, the logits are not tanh-squashed
(a tanh caps the most likely of 4 actions at probability 0.71).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading

import numpy as np
import torch
from torch import nn

from lamo_scale.config import ModelConfig
from lamo_scale.model.adapters import apply_finetune_mode
from lamo_scale.model.backbone import load_backbone
from lamo_scale.model.dropout import use_cheap_dropout
from lamo_scale.model import packing
from lamo_scale.model.lm_loss import language_loss_from_hidden, language_model_loss
from lamo_scale.model.sharded import fingerprint_step
from lamo_scale.model.state_encoders import make_state_encoder

log = logging.getLogger(__name__)


class MLPEmbedding(nn.Module):
    """LaMo's embedding: ``h = W1 x; out = h + W2 GELU(h)`` (Linear→GELU→Linear with a skip)."""

    def __init__(self, in_dim: int, hidden: int):
        """Map ``in_dim`` features to the backbone width ``hidden``."""
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x [..., in_dim]``."""
        h = self.fc1(x)
        return h + self.fc2(nn.functional.gelu(h))


def make_embedding(kind: str, in_dim: int, hidden: int) -> nn.Module:
    """An MLP (LaMo) or linear (DT) embedding."""
    return MLPEmbedding(in_dim, hidden) if kind == "mlp" else nn.Linear(in_dim, hidden)


def make_action_head(kind: str, hidden: int, act_dim: int, bounded: bool) -> nn.Module:
    """An MLP (LaMo) or linear (DT) action head, tanh-squashed when actions are bounded."""
    layers: list[nn.Module] = ([nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, act_dim)]
                               if kind == "mlp" else [nn.Linear(hidden, act_dim)])
    if bounded:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def embedding_rms(lm: nn.Module) -> float:
    """RMS of the backbone's input-embedding table: the scale its first layer was trained on.

    A sharded build (ZeRO-3 partitions, FSDP2 meta) read it from the checkpoint files; a
    ZeRO-3 random init gathers the table once.
    """
    known = getattr(lm, "_lamo_embedding_rms", None)
    if known is not None:
        return float(known)
    weight = lm.get_input_embeddings().weight
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return float(weight.detach().double().pow(2).mean().sqrt())
    # float64: the same value (to float32 precision) as the chunked sum a sharded build reads from the files
    return float(weight.detach().double().pow(2).mean().sqrt())


def _zero_positions(module, args, output):
    return torch.zeros_like(output)


@contextlib.contextmanager
def _positions_skipped(wpe: nn.Module | None):
    """Within the block, the absolute position embedding ``wpe`` adds zeros (RL tokens only)."""
    if wpe is None:
        yield
        return
    handle = wpe.register_forward_hook(_zero_positions)
    try:
        yield
    finally:
        handle.remove()


class LaMoPolicy(nn.Module):
    """Backbone + RL embeddings + action head; one object for training and rollout."""

    def __init__(self, lm: nn.Module, state_dim: int, act_dim: int, cfg: ModelConfig,
                 action_low: np.ndarray | None = None, action_high: np.ndarray | None = None):
        """Wrap an (already frozen/LoRA-wrapped) causal LM for ``state_dim`` → ``act_dim`` control."""
        super().__init__()
        self.cfg = cfg
        self.state_dim, self.act_dim = state_dim, act_dim
        self.lm = lm
        hidden = self.causal_lm.config.hidden_size
        self.hidden_size = hidden
        self.discrete = cfg.actions == "discrete"
        self.embed_return = make_embedding(cfg.embedding, 1, hidden)
        if cfg.state_encoder == "cnn":
            state_embedding = make_embedding(cfg.embedding, hidden, hidden) if cfg.embedding == "mlp" else None
        else:
            state_embedding = make_embedding(cfg.embedding, state_dim, hidden)
        self.embed_state = make_state_encoder(cfg.state_encoder, state_embedding, cfg.observation_shape, hidden)
        self.embed_action = make_embedding(cfg.embedding, act_dim, hidden)
        self.input_scale = float(cfg.input_scale) if cfg.input_scale is not None else embedding_rms(self.causal_lm)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, hidden)
        nn.init.normal_(self.embed_timestep.weight, std=self.input_scale)
        self.embed_ln = nn.LayerNorm(hidden)
        nn.init.constant_(self.embed_ln.weight, self.input_scale)
        bounded = (not self.discrete and action_low is not None
                   and bool(np.all(np.isfinite(action_low)) and np.all(np.isfinite(action_high))))
        self.action_head = make_action_head(cfg.action_head, hidden, act_dim, bounded)
        low = np.zeros(act_dim, np.float32) if not bounded else np.asarray(action_low, np.float32)
        high = np.ones(act_dim, np.float32) if not bounded else np.asarray(action_high, np.float32)
        # tanh output in [-1, 1] is mapped affinely onto [low, high].
        self.register_buffer("action_center", torch.from_numpy((high + low) / 2), persistent=False)
        self.register_buffer("action_halfwidth", torch.from_numpy((high - low) / 2), persistent=False)
        self.bounded = bounded

    # accelerate's FSDP2 preparation carves the LM's input embedding and its tail (final norm +
    # LM head) into FSDP units of their own, looking for them through these three names. Without
    # them the untied embedding and head of a Llama sat in the root unit, all-gathered at every
    # forward and held through the step although RL tokens never touch them (bench/README.md).
    base_model_prefix = "transformer"

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's token-embedding table (used only by the language loss)."""
        return self.causal_lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        """The backbone's LM head (used only by the language loss)."""
        return self.causal_lm.get_output_embeddings()

    @property
    def causal_lm(self) -> nn.Module:
        """The ``*ForCausalLM`` module (inside the peft wrapper when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def _no_split_modules(self):
        """The backbone's block classes (FSDP's transformer auto-wrap reads this)."""
        return getattr(self.causal_lm, "_no_split_modules", None)

    @property
    def transformer(self) -> nn.Module:
        """The backbone's transformer stack without the LM head (GPT2Model, LlamaModel, ...)."""
        return self.causal_lm.base_model

    @property
    def image_states(self) -> bool:
        """Whether states are frames through the CNN encoder (acting then encodes each frame once)."""
        return self.cfg.state_encoder == "cnn"

    def encode_states(self, states: torch.Tensor) -> torch.Tensor:
        """State tokens ``[..., hidden]`` (before the LayerNorm) of states ``[..., *state_shape]``; a
        window's state tokens may be passed to :meth:`predict_actions` instead of its states."""
        return self.embed_state(states)

    def predict_actions(self, states: torch.Tensor | None, actions: torch.Tensor, returns_to_go: torch.Tensor,
                        timesteps: torch.Tensor, attention_mask: torch.Tensor,
                        state_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted actions ``[B, K, act_dim]`` for segments ``[B, K, ...]`` (discrete: logits; see module doc).

        ``state_tokens`` (``[B, K, hidden]``, from :meth:`encode_states`) replace ``states`` when given."""
        tokens, mask = self._rl_tokens(states, actions, returns_to_go, timesteps, attention_mask, state_tokens)
        with _positions_skipped(self._wpe):
            hidden = self.transformer(inputs_embeds=tokens, attention_mask=mask, use_cache=False).last_hidden_state
        return self._actions_from_hidden(hidden)

    def _rl_tokens(self, states, actions, returns_to_go, timesteps, attention_mask, state_tokens=None):
        """The interleaved (R, s, a) input tokens and their padding mask, ``[B, 3K - 1, ...]``.

        The last step's action token is left out: under causal attention no read-out position (the
        state tokens) sees it, so dropping it changes no output and saves 1/(3K) of the window."""
        batch, k = actions.shape[:2]
        time = self.embed_timestep(timesteps.clamp(0, self.cfg.max_timestep - 1))
        if state_tokens is None:
            state_tokens = self.encode_states(states)
        tokens = torch.stack([self.embed_return(returns_to_go), state_tokens,
                              self.embed_action(actions)], dim=2)
        tokens = (self.embed_ln(tokens) + time.unsqueeze(2)).reshape(batch, 3 * k, self.hidden_size)
        if not (torch.is_autocast_enabled(tokens.device.type) and self._norms_take_fp32):
            tokens = tokens.to(self.backbone_dtype)
        # Under autocast the tokens stay fp32, so the residual stream does too (type promotion of
        # the bf16 matmul outputs): with a bf16-stored base and bf16 tokens it is rounded at every
        # layer, which moved actions by up to 0.16 vs fp32 (tests/test_precision.py), not 0.06.
        return tokens[:, :-1], attention_mask.repeat_interleave(3, dim=1)[:, :-1]

    def _actions_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The action head read at the state tokens (positions 1, 4, ...) of the backbone's last
        hidden states ``[B, 3K - 1, hidden]``."""
        state_hidden = hidden[:, 1::3]
        # device too: a backbone dispatched over several GPUs (placement.AUTO) ends on the last one
        out = self.action_head(state_hidden.to(self.embed_ln.weight.device, self.embed_ln.weight.dtype))
        if self.bounded:
            out = self.action_center + self.action_halfwidth * out
        return out

    @property
    def _wpe(self) -> nn.Module | None:
        """GPT-2's absolute position embedding, which RL tokens skip (None: kept, or none exists)."""
        return None if self.cfg.rl_position_embeddings else getattr(self.transformer, "wpe", None)

    @property
    def packs_text(self) -> bool:
        """Whether a co-training step runs RL windows and text in one backbone call (model.pack_text)."""
        return packing.is_packed(self.causal_lm)

    def _packed_hidden(self, rl_inputs: tuple, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of the RL windows ``[B, 3K - 1, hidden]`` and of ``text_ids`` ``[Bt, T, hidden]``
        from one backbone call (:mod:`lamo_scale.model.packing`)."""
        tokens, mask = self._rl_tokens(*rl_inputs)
        text = self.get_input_embeddings()(text_ids)
        if self._wpe is not None:  # text keeps its positions; the call adds none (with rl_position_embeddings
            # it adds wpe of the per-segment positions to both)
            text = text + self._wpe(torch.arange(text_ids.shape[1], device=text.device))
        # device too: under placement.AUTO the token embedding and the RL embeddings may sit on different GPUs
        text = text.to(tokens.device, tokens.dtype)
        with _positions_skipped(self._wpe):
            return packing.packed_call(self.transformer, [(tokens, mask), (text, None)])

    @functools.cached_property
    def _norms_take_fp32(self) -> bool:
        """Whether fp32 hidden states may enter the backbone: nn.LayerNorm with bf16 weights
        (GPT-2 stored in bf16) refuses fp32 input on CPU ("mixed dtype"), so such a backbone keeps
        a residual stream in its own dtype; RMSNorm (Llama family) upcasts internally and takes it."""
        return not any(isinstance(m, nn.LayerNorm) and m.weight is not None and m.weight.dtype != torch.float32
                       for m in self.transformer.modules())

    @property
    def backbone_dtype(self) -> torch.dtype:
        """Dtype the backbone computes in (its input embeddings must match it)."""
        return self.causal_lm.get_input_embeddings().weight.dtype

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, attention_mask: torch.Tensor, text_ids: torch.Tensor | None = None,
                language_weight: float = 0.0, valid_steps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training objective in ONE forward call: action loss + ``language_weight`` × LM loss.

        The action loss is the MSE over action dimensions (continuous), or the cross-entropy of the
        logits against the one-hot actions (discrete), averaged over the valid steps.

        One call per backward keeps DDP/ZeRO/FSDP hooks happy (two forwards then one backward
        is a known ZeRO-3 failure mode). ``text_ids=None`` runs no LM forward at all.
        ``valid_steps`` is the number of unpadded steps the action MSE is averaged over; the
        trainer passes the global count divided by the world size, so that the ranks' mean
        loss (what DDP's gradient averaging optimises) is exactly the one-process loss.
        """
        rl_inputs = (states, actions, returns_to_go, timesteps, attention_mask)
        co_training = text_ids is not None and language_weight > 0
        if co_training and self.packs_text:
            rl_hidden, text_hidden = self._packed_hidden(rl_inputs, text_ids)
            pred = self._actions_from_hidden(rl_hidden)
        else:
            text_hidden = None
            pred = self.predict_actions(*rl_inputs)
        if self.discrete:
            mask = attention_mask.to(torch.float32)
            err = nn.functional.cross_entropy(pred.float().flatten(0, 1), actions.argmax(-1).flatten(),
                                              reduction="none").reshape(mask.shape) * mask
            per_step = 1
        else:
            mask = attention_mask.unsqueeze(-1).to(pred.dtype)
            err = ((pred.float() - actions.float()) ** 2) * mask
            per_step = self.act_dim
        denom = mask.sum() if valid_steps is None else valid_steps.to(err.dtype)
        action_loss = err.sum() / (denom * per_step).clamp_min(1.0)
        out = {"action_loss": action_loss, "loss": action_loss}
        if co_training:
            language_loss = (language_model_loss(self.causal_lm, self.transformer, text_ids) if text_hidden is None
                             else language_loss_from_hidden(self.causal_lm, text_hidden, text_ids))
            out["language_loss"] = language_loss
            out["loss"] = action_loss + language_weight * language_loss
        return out

    @torch.no_grad()
    def act(self, states, actions, returns_to_go, timesteps, attention_mask, state_tokens=None) -> torch.Tensor:
        """Actions for the last step of each window ``[B, act_dim]`` (rollout entry point); discrete:
        the one-hot of the arg-max action. ``state_tokens``: see :meth:`predict_actions`."""
        pred = self.predict_actions(states, actions, returns_to_go, timesteps, attention_mask,
                                    state_tokens)[:, -1].float()
        if self.discrete:
            return nn.functional.one_hot(pred.argmax(-1), self.act_dim).float()
        return pred

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint must hold: every parameter that trains (adapters, embeddings, heads)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def frozen_fingerprint(self) -> str:
        """A hash of the frozen backbone weights: a checkpoint is only valid on the same frozen base.

        Hashes the exact bytes of up to 4,096 evenly spaced elements of every frozen tensor
        (plus names and shapes): cheap for multi-GB backbones and, unlike a floating-point sum,
        independent of the thread count.
        """
        digest = hashlib.sha256()
        for name, p in self.named_parameters():
            if not p.requires_grad:
                sample = getattr(p, "_lamo_sample", None)  # sharded builds: sampled from the files
                if sample is None:
                    gathered = contextlib.nullcontext()
                    if hasattr(p, "ds_id"):
                        import deepspeed

                        gathered = deepspeed.zero.GatheredParameters([p], modifier_rank=None)
                    with gathered:
                        flat = p.detach().reshape(-1)
                        sample = flat[::fingerprint_step(flat.numel())].clone()
                shape = tuple(getattr(p, "_lamo_shape", None) or getattr(p, "ds_shape", None) or p.shape)
                digest.update(f"{name}:{shape}:{p.dtype}".encode())
                digest.update(sample.float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters())
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters() if p.requires_grad)
        return trainable, total


# Initialisation draws from torch's process-wide RNG: two threads building at once (a sweep
# evaluating two runs) would interleave their draws, and a random-init backbone, which is
# frozen and never saved, could then not be rebuilt bit-for-bit from its seed.
_BUILD_LOCK = threading.Lock()


def build_policy(cfg: ModelConfig, state_dim: int, act_dim: int, action_low=None, action_high=None,
                 seed: int = 0, language_loss: bool = True, sharding=None):
    """Load the backbone, apply the fine-tuning mode, add embeddings/heads; returns ``(policy, tokenizer)``.

    ``language_loss=False`` (λ = 0) leaves the token embeddings / LM head frozen under full fine-tuning.
    Every weight is a function of ``seed`` alone, also when threads build policies at the same time.
    ``sharding`` (``distributed.sharded_init``): build the backbone partitioned (ZeRO-3) or on meta (FSDP2).
    """
    with _BUILD_LOCK:
        return _build_policy(cfg, state_dim, act_dim, action_low, action_high, seed, language_loss, sharding)


def _build_policy(cfg, state_dim, act_dim, action_low, action_high, seed, language_loss, sharding=None):
    lm, tokenizer = load_backbone(cfg, seed=seed, sharding=sharding)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = apply_finetune_mode(lm, cfg, language_loss)
    use_cheap_dropout(lm)  # backbone and LoRA dropout: a CPU mask at ~2/5 of bernoulli_'s cost
    torch.manual_seed(seed + 1)
    policy = LaMoPolicy(lm, state_dim, act_dim, cfg, action_low, action_high)
    trainable, total = policy.parameter_counts()
    log.info("policy: backbone %s (%s, %s), trainable %s of %s parameters (%.2f%%)", cfg.backbone,
             "pre-trained" if cfg.pretrained else "random init", cfg.finetune, f"{trainable:,}",
             f"{total:,}", 100.0 * trainable / total)
    return policy, tokenizer
