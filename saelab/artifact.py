"""The SAE a run hands in: encode and decode as torch.export programs, runnable without its code.

    save_artifact(encode_fn, decode_fn, example_BLD, out_dir)   # in experiment.py, after training
    sae = load_artifact(out_dir)                                 # in the referee
    f_BLF = sae.encode(x_BLD); x_hat_BLD = sae.decode(f_BLF)

Both programs read and write raw residuals [B, L, D] / latents [B, L, F] with dynamic batch and
length. A program is a graph of aten operators plus its weights: loading it runs no workspace
code, and it cannot carry state from one call to the next without the graph saying so
(`mutated_buffers` is recorded). The referee loads with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1, so a
crafted file cannot run pickled code (torch.export.load otherwise falls back to full unpickling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

ENCODE_FILE, DECODE_FILE = "encode.pt2", "decode.pt2"
FILES = (ENCODE_FILE, DECODE_FILE)
FIX = (
    "make encode/decode pure tensor functions of their input (no Python-side state, no "
    "data-dependent shapes such as nonzero(); e.g. a dense decode in eval mode), "
    "or see torch.export's message above"
)


class ArtifactError(RuntimeError):
    """The SAE could not be exported or loaded; the message says why and how to fix it."""


class _Call(nn.Module):
    """An nn.Module around one method of an SAE, so torch.export lifts the SAE's weights."""

    def __init__(self, fn: Callable[[Tensor], Tensor], owner: nn.Module | None):
        super().__init__()
        self.fn, self.owner = fn, owner  # owner registers the parameters fn reads

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def export_one(
    fn: Callable[[Tensor], Tensor], example: Tensor, owner: nn.Module | None
) -> ExportedProgram:
    """torch.export of `fn` with dynamic batch (dim 0) and length (dim 1)."""
    shapes = {"x": {0: Dim("batch", min=1, max=2**16), 1: Dim("length", min=1, max=2**16)}}
    try:
        return torch.export.export(
            _Call(fn, owner), (example,), dynamic_shapes=shapes, strict=False
        )
    except Exception as error:  # export raises many types; all mean the same thing here
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(
            f"torch.export failed ({type(error).__name__}: {first}): {FIX}"
        ) from error


def save_artifact(
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    example_BLD: Tensor,
    out_dir: Path,
    owner: nn.Module | None = None,
) -> list[Path]:
    """Export encode and decode on raw residuals, save them, and check the saved programs
    reproduce the functions on `example_BLD` (B, L >= 2, so no size is specialised to 1)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        f_BLF = encode(example_BLD)
        x_hat_BLD = decode(f_BLF)
    programs = {
        ENCODE_FILE: export_one(encode, example_BLD, owner),
        DECODE_FILE: export_one(decode, f_BLF, owner),
    }
    for name, program in programs.items():
        torch.export.save(program, out_dir / name)
    loaded = load_artifact(out_dir)
    with torch.no_grad():
        same = torch.allclose(loaded.encode(example_BLD), f_BLF, atol=1e-5) and torch.allclose(
            loaded.decode(f_BLF), x_hat_BLD, atol=1e-4
        )
    if not same:
        raise ArtifactError(f"the exported programs do not reproduce encode/decode: {FIX}")
    return [out_dir / name for name in FILES]


@dataclass
class ExportedSAE:
    """An SAE loaded from its exported programs: the evals' SAELike interface."""

    encode_program: ExportedProgram
    decode_program: ExportedProgram
    d_in: int
    d_sae: int

    def __post_init__(self) -> None:
        self._encode = self.encode_program.module()
        self._decode = self.decode_program.module()

    def encode(self, x_BLD: Tensor) -> Tensor:
        return self._encode(x_BLD)

    def decode(self, f_BLF: Tensor) -> Tensor:
        return self._decode(f_BLF)

    @property
    def mutated_buffers(self) -> list[str]:
        """Buffers (or inputs) a call writes: state carried from one call to the next. Read from
        the functionalised graph (export keeps in-place ops; functionalising lists them)."""
        written = []
        for program in (self.encode_program, self.decode_program):
            signature = program.run_decompositions({}).graph_signature
            written += [*signature.buffers_to_mutate.values()]
            written += [*signature.user_inputs_to_mutate.values()]
        return written

    @property
    def n_weights(self) -> int:
        """Numbers held by both programs (parameters, buffers, constants)."""
        tensors = [
            t
            for program in (self.encode_program, self.decode_program)
            for t in (*program.state_dict.values(), *program.constants.values())
            if isinstance(t, Tensor)
        ]
        return sum(t.numel() for t in tensors)


def load_artifact(directory: Path) -> ExportedSAE:
    """The SAE in `directory`; ArtifactError naming the missing or unreadable file."""
    directory = Path(directory)
    programs = []
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(
                f"{path} is missing: experiment.py must save the SAE with "
                "saelab.artifact.save_artifact(encode, decode, example, out_dir)"
            )
        try:
            programs.append(torch.export.load(path))
        except Exception as error:
            raise ArtifactError(
                f"{path} cannot be loaded ({type(error).__name__}: {error})"
            ) from error
    encode, decode = programs
    d_in = _last_dim(encode, "input")
    d_sae = _last_dim(decode, "input")
    return ExportedSAE(encode, decode, d_in, d_sae)


def _last_dim(program: ExportedProgram, what: str) -> int:
    user_inputs = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs)
    size = node.meta["val"].shape[-1]
    if not isinstance(size, int):
        raise ArtifactError(f"the {what}'s last dimension must be fixed, not dynamic ({size})")
    return size


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files, in the order given (names included)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()
