"""Build a large backbone already sharded: no rank ever holds the whole model.

Two strategies, chosen by :mod:`lamo_scale.distributed` from the launch mode:

* ``zero3`` — the model is constructed inside ``deepspeed.zero.Init`` (with transformers'
  ``HfDeepSpeedConfig`` kept alive, so transformers knows ZeRO-3 is on): every parameter is
  partitioned as soon as its module is built, in the compute dtype. Each rank then reads
  *its own partition* of every tensor straight from the checkpoint's safetensors files.
* ``fsdp2`` — the model is constructed on the ``meta`` device (buffers real); LoRA adapters
  and the LaMo embeddings/heads are real tensors. After ``accelerator.prepare`` has applied
  ``fully_shard``, :func:`materialize_fsdp2` allocates only the local DTensor shards and fills
  them from the files.

Reading: a safetensors tensor is stored row-major and contiguously, so a ZeRO-3 partition
(a flat element range) and an FSDP2 ``Shard(0)`` shard (a row range) are each one contiguous
byte range of the file. They are read with ``os.pread`` — no ``mmap`` — so the page cache
holds the file once for the whole node and no rank's resident set ever contains more than its
own shard plus one tensor's worth of conversion buffer (``chunk_bytes`` at most).

Only safetensors checkpoints whose tensor names match the model's (Llama, Mistral, Qwen, GPT-2
and other standard layouts) take this path; anything else falls back to transformers' own
ZeRO-3 loader (``from_pretrained`` under ``HfDeepSpeedConfig``) or, under FSDP2, to a full
per-rank load with a warning.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NP_CARRIER = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
CHUNK_BYTES = 16 << 20
"""Largest single read: bounds the transient buffer when a shard is converted to another dtype."""

BYTES_READ = [0]
"""Bytes this process has read from checkpoint files for its shards (tests / bench check it)."""

FINGERPRINT_SAMPLES = 4096


def fingerprint_step(numel: int) -> int:
    """Stride of the frozen fingerprint's sample ``flat[::step]``: up to FINGERPRINT_SAMPLES elements."""
    return max(1, numel // FINGERPRINT_SAMPLES)
"""Elements per frozen tensor that ``LaMoPolicy.frozen_fingerprint`` hashes (must match it)."""


@dataclass
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


class SafetensorsDir:
    """The tensors of a local checkpoint directory (``model.safetensors`` or a sharded index)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {self.directory}")
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                if entry["dtype"] not in _DTYPES:
                    raise ValueError(f"{file}: tensor {name} has unsupported dtype {entry['dtype']}")
                begin, _ = entry["data_offsets"]
                self.tensors[name] = TensorInfo(file, _DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + n + begin)
        self._fds: dict[Path, int] = {}

    @classmethod
    def find(cls, name: str) -> Optional["SafetensorsDir"]:
        """The reader for a local directory or a hub id already in the local cache; None if not safetensors."""
        path = Path(name).expanduser()
        if not path.is_dir():
            try:
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"],
                                              local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")))
            except Exception as err:  # noqa: BLE001 - any failure means: not streamable, use the fallback
                log.info("no local safetensors snapshot for %s (%s)", name, type(err).__name__)
                return None
        try:
            return cls(path)
        except (FileNotFoundError, ValueError) as err:
            log.info("%s: %s", name, err)
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, file: Path) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        return self._fds[file]

    def key_for(self, name: str, prefix: str) -> Optional[str]:
        """The file's name for model tensor ``name`` (with or without the model's ``base_model_prefix``)."""
        if name in self.tensors:
            return name
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in self.tensors:
            return name[len(prefix) + 1:]
        if prefix and f"{prefix}.{name}" in self.tensors:
            return f"{prefix}.{name}"
        return None

    def read_flat_into(self, key: str, start: int, out: torch.Tensor, tally: bool = True) -> None:
        """Copy elements ``[start, start + out.numel())`` of the flattened tensor into ``out`` (any dtype);
        ``tally``: count the bytes in :data:`BYTES_READ` (shard reads; not the chunked RMS pass)."""
        info = self.tensors[key]
        count = out.numel()
        if start < 0 or start + count > info.numel:
            raise ValueError(f"{key}: elements [{start}, {start + count}) outside {info.numel}")
        flat = out.view(-1)
        step = max(1, CHUNK_BYTES // info.itemsize)
        fd = self._fd(info.file)
        done = 0
        while done < count:
            n = min(step, count - done)
            offset = info.begin + (start + done) * info.itemsize
            raw = os.pread(fd, n * info.itemsize, offset)
            if len(raw) != n * info.itemsize:
                raise OSError(f"{info.file}: short read for {key}")
            if tally:
                BYTES_READ[0] += len(raw)
            src = torch.frombuffer(bytearray(raw), dtype=info.dtype)
            flat[done:done + n].copy_(src)
            done += n

    def read(self, key: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """A whole (small) tensor."""
        info = self.tensors[key]
        out = torch.empty(info.shape, dtype=dtype or info.dtype)
        self.read_flat_into(key, 0, out)
        return out

    def rms(self, key: str, dtype: torch.dtype) -> float:
        """Root-mean-square of a tensor as stored in ``dtype``, read in chunks (never whole)."""
        info = self.tensors[key]
        step = max(1, CHUNK_BYTES // 16)  # the float64 square of a chunk stays ~CHUNK_BYTES
        total = 0.0
        for start in range(0, info.numel, step):
            buf = torch.empty(min(step, info.numel - start), dtype=dtype)
            self.read_flat_into(key, start, buf, tally=False)
            total += float(buf.double().square_().sum())
        return (total / max(info.numel, 1)) ** 0.5

    def sample(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """``flat[::step]`` (the frozen fingerprint's sample) in ``dtype``, touching only those elements' pages."""
        info = self.tensors[key]
        step = fingerprint_step(info.numel)
        mm = np.memmap(info.file, dtype=_NP_CARRIER[info.itemsize], mode="r", offset=info.begin, shape=(info.numel,))
        try:
            picked = np.array(mm[::step])
        finally:
            del mm
        return torch.from_numpy(picked).view(info.dtype).to(dtype)


# --------------------------------------------------------------------------------------- plans
@dataclass
class ShardedInit:
    """How this process builds the backbone: ``zero3`` or ``fsdp2`` (see the module docstring)."""

    strategy: str
    rank: int = 0
    world: int = 1
    ds_config: Optional[dict] = None
    keep_alive: list[Any] = field(default_factory=list)
    """Objects that must outlive the model build (transformers' HfDeepSpeedConfig is a weakref)."""


def _param_keys(lm: torch.nn.Module, reader: SafetensorsDir) -> tuple[dict, list[str]]:
    """{(module, param name): file key} for every (deduplicated) parameter, and the names not in the files."""
    prefix = getattr(lm, "base_model_prefix", "")
    keys, missing = {}, []
    for full, _ in lm.named_parameters():
        owner, _, local = full.rpartition(".")
        key = reader.key_for(full, prefix)
        if key is None:
            missing.append(full)
        else:
            keys[(lm.get_submodule(owner) if owner else lm, local)] = key
    return keys, missing


def _load_buffers(lm: torch.nn.Module, reader: SafetensorsDir) -> None:
    prefix = getattr(lm, "base_model_prefix", "")
    with torch.no_grad():
        for full, buf in lm.named_buffers():
            key = reader.key_for(full, prefix)
            if key is not None and buf is not None and tuple(buf.shape) == reader.tensors[key].shape:
                buf.copy_(reader.read(key, buf.dtype))


def _annotate(lm: torch.nn.Module, keys: dict, reader: SafetensorsDir) -> None:
    """Per-parameter fingerprint samples (read from the files) and the embedding RMS, for the policy."""
    for (module, local), key in keys.items():
        p = module._parameters[local]
        p._lamo_sample = reader.sample(key, p.dtype)
        p._lamo_shape = reader.tensors[key].shape
    emb = lm.get_input_embeddings().weight
    emb_key = next(k for (m, n), k in keys.items() if m._parameters[n] is emb)
    lm._lamo_embedding_rms = reader.rms(emb_key, emb.dtype)


def build_zero3(config, dtype: torch.dtype, plan: ShardedInit, reader: Optional[SafetensorsDir], kwargs: dict):
    """Construct under ``zero.Init`` (partitioned at birth) and stream each rank's partitions from the files."""
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    try:
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:  # transformers < 5.23 has no such guard (nor the arange-in-zero.Init change it undoes)
        prevent_arange_dtype_change = contextlib.nullcontext
    from transformers.modeling_utils import set_zero3_state

    if reader is None:
        return None
    with torch.random.fork_rng(devices=[]), no_init_weights(), prevent_arange_dtype_change(), \
            deepspeed.zero.Init(config_dict_or_path=plan.ds_config), set_zero3_state():
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    lm.tie_weights()  # GPT-2 & co.: lm_head shares the embedding (the checkpoint holds it once)
    wrong = {p.dtype for p in lm.parameters()} - {dtype}
    if wrong:
        raise RuntimeError(f"zero.Init built {wrong} parameters, expected {dtype}")
    keys, missing = _param_keys(lm, reader)
    if missing:
        raise ValueError(f"checkpoint {reader.directory} lacks {missing[:5]}")
    import torch.distributed as tdist

    with torch.no_grad():
        for (module, local), key in keys.items():
            p = module._parameters[local]
            part = p.ds_tensor
            size = part.ds_numel
            start = size * tdist.get_rank(group=p.ds_process_group)
            count = max(0, min(size, p.ds_numel - start))
            if count:
                reader.read_flat_into(key, start, part.narrow(0, 0, count))
            if count < size:
                part.narrow(0, count, size - count).zero_()
    _load_buffers(lm, reader)
    _annotate(lm, keys, reader)
    lm._lamo_sharded = "zero3"
    return lm


def build_meta(config, dtype: torch.dtype, reader: SafetensorsDir, kwargs: dict):
    """Construct with parameters on ``meta`` (buffers real); the files are read after ``fully_shard``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]), init_empty_weights(include_buffers=False):
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    lm.tie_weights()
    keys, missing = _param_keys(lm, reader)
    if missing:
        raise ValueError(f"checkpoint {reader.directory} lacks {missing[:5]}")
    _load_buffers(lm, reader)
    _annotate(lm, keys, reader)
    for (module, local), key in keys.items():
        module.__dict__.setdefault("_lamo_file_keys", {})[local] = key
    lm._lamo_reader = reader
    lm._lamo_sharded = "fsdp2"
    return lm


def materialize_fsdp2(model: torch.nn.Module) -> int:
    """After ``fully_shard``: allocate each meta parameter's *local* shard and fill it from the files.

    Returns the number of elements this rank read. Raises if a parameter stays on ``meta``.
    """
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    readers = {id(m._lamo_reader): m._lamo_reader for m in model.modules() if hasattr(m, "_lamo_reader")}
    if not readers:
        return 0
    (reader,) = readers.values()
    model._apply(lambda t: torch.empty_like(t, device="cpu") if t.is_meta else t)
    read = 0
    with torch.no_grad():
        for module in model.modules():
            for local, key in module.__dict__.get("_lamo_file_keys", {}).items():
                p = module._parameters[local]
                if isinstance(p, DTensor):
                    shard = p.to_local()
                    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
                    if shard.numel() and any(o and i > 0 for i, o in enumerate(offset)):
                        raise NotImplementedError(f"{key}: only row (dim-0) sharding is streamed")
                    start = (offset[0] if len(offset) else 0) * (int(np.prod(p.shape[1:])) if p.dim() > 1 else 1)
                else:
                    shard, start = p.data, 0
                if shard.numel():
                    reader.read_flat_into(key, start, shard)
                    read += shard.numel()
    still = [n for n, p in model.named_parameters() if p.is_meta]
    if still:
        raise RuntimeError(f"parameters left on meta after materialisation: {still[:5]}")
    reader.close()
    return read


# ------------------------------------------------------------------------- test / bench helper
def write_random_backbone(directory: str | Path, arch: str = "llama", layers: int = 2, width: int = 64,
                          heads: int = 2, kv_heads: Optional[int] = None, intermediate: Optional[int] = None,
                          vocab: int = 1024, tie: bool = False, dtype: torch.dtype = torch.float32,
                          seed: int = 0, max_shard_size: str = "2GB") -> Path:
    """A random-init Llama- or GPT-2-shaped checkpoint saved like a hub one (config, safetensors,
    byte-level tokenizer), built layer by layer so that writing it never holds two copies."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(hidden_size=width, intermediate_size=intermediate or 4 * width, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv_heads or heads, vocab_size=vocab,
                             max_position_embeddings=2048, tie_word_embeddings=tie, bos_token_id=256, eos_token_id=256)
        model_cls = LlamaForCausalLM
    else:
        config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, n_positions=1024,
                            bos_token_id=256, eos_token_id=256)
        model_cls = GPT2LMHeadModel
    with torch.device("cpu"):
        torch.set_default_dtype(dtype)
        try:
            lm = model_cls(config)
        finally:
            torch.set_default_dtype(torch.float32)
    lm.save_pretrained(directory, max_shard_size=max_shard_size)
    del lm
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab_map = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab_map["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(directory)
    return directory
