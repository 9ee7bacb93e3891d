"""Every eval hands the SAE its inputs on the SAE's device and takes its outputs back.

On a GPU the model's residuals and the activation cache are CPU tensors while the SAE lives on
CUDA. A CPU-only machine has one real device, so the SAE here lives on an emulated second
one: an `Elsewhere` tensor holds CPU data but reports device `meta`, and an op that mixes it
with a CPU tensor of one or more dimensions raises, as CUDA does. Moving a tensor to `meta`
(or creating one there) inside `elsewhere()` makes an Elsewhere tensor; moving it to `cpu`
gives the data back. The SAE asserts the device of every input it receives, and the evals'
numbers must equal those of the same SAE on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from saelab.activations import ActivationCache, harvest
from saelab.evals import EVALS, EvalConfig, Normalized, check_causal, run_evals
from saelab.evals.common import sae_device, splice
from saelab.evals.reference import PCASAE
from saelab.models import LanguageModel, load_model

ELSEWHERE = torch.device("meta")
LAYER = 2
CONFIG = EvalConfig().tiny()


class Elsewhere(Tensor):
    """CPU data on the emulated second device."""

    @staticmethod
    def __new__(cls, elem: Tensor) -> Elsewhere:
        return Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            device=ELSEWHERE,
        )

    def __init__(self, elem: Tensor):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device", ELSEWHERE) != ELSEWHERE:
            return func(args[0].elem, **kwargs)  # leaving the device: plain CPU data again
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        stray = [t for t in tensors if not isinstance(t, Elsewhere) and t.dim() > 0]
        if stray:
            raise RuntimeError(f"{func}: expected all tensors on {ELSEWHERE}, one is on cpu")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        return tree_map(_wrap, out)


def _unwrap(t: object) -> object:
    return t.elem if isinstance(t, Elsewhere) else t


def _wrap(t: object) -> object:
    return Elsewhere(t) if isinstance(t, Tensor) and not isinstance(t, Elsewhere) else t


def _is_elsewhere(value: object) -> bool:
    return isinstance(value, torch.device | str) and str(value) == str(ELSEWHERE)


class _Arrivals(TorchFunctionMode):
    """`.to("meta")`, `device="meta"` and friends make Elsewhere tensors; `.numpy()` of one
    raises, as it does for a CUDA tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is Tensor.numpy and isinstance(args[0], Elsewhere):
            raise TypeError("can't convert an Elsewhere tensor to numpy: move it to cpu first")
        if func is torch.device or not any(map(_is_elsewhere, (*args, *kwargs.values()))):
            return func(*args, **kwargs)

        def here(a: object) -> object:
            return torch.device("cpu") if _is_elsewhere(a) else a

        out = func(*map(here, args), **{k: here(v) for k, v in kwargs.items()})
        return tree_map(_wrap, out)


@contextlib.contextmanager
def elsewhere() -> Iterator[None]:
    with _Arrivals():
        yield


def moved(sae: PCASAE) -> PCASAE:
    """A copy of `sae` with every tensor on the emulated second device."""
    far = PCASAE.__new__(PCASAE)
    far.__dict__.update(
        {k: Elsewhere(v) if isinstance(v, Tensor) else v for k, v in vars(sae).items()}
    )
    return far


class Strict:
    """Forwards to an SAE on the second device; fails on any input that is not there."""

    device = ELSEWHERE  # an SAE may also say where it is

    def __init__(self, sae: PCASAE):
        self.sae, self.d_in, self.d_sae, self.calls = sae, sae.d_in, sae.d_sae, 0

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(self._arrived(x, "encode"))

    def decode(self, f: Tensor) -> Tensor:
        return self.sae.decode(self._arrived(f, "decode"))

    def _arrived(self, t: Tensor, method: str) -> Tensor:
        assert isinstance(t, Elsewhere), f"{method} was handed a tensor on {t.device}"
        self.calls += 1
        return t


@pytest.fixture(scope="module")
def model(hub_lab: Path, hub_gemma2: Path) -> LanguageModel:
    return load_model(str(hub_gemma2))


@pytest.fixture(scope="module")
def caches(model: LanguageModel) -> tuple[ActivationCache, ActivationCache]:
    return harvest(model, LAYER, "offline-mix", 32, 32 * 48, progress=False).split(0.25)


@pytest.fixture(scope="module")
def saes(caches) -> tuple[PCASAE, PCASAE]:
    train = caches[0].acts.float().flatten(0, 1)
    return PCASAE(train, k=16), PCASAE(train, k=16, seed=1)


def test_the_emulated_device_refuses_cpu_tensors():
    far = Elsewhere(torch.ones(3))
    with elsewhere():
        assert (far * 2).device == ELSEWHERE and torch.ones(3).to("meta").device == ELSEWHERE
        assert torch.equal(far.cpu(), torch.ones(3))
        with pytest.raises(RuntimeError, match="expected all tensors"):
            far + torch.ones(3)
        with pytest.raises(TypeError, match="numpy"):
            far.numpy()


def test_every_eval_gets_the_same_numbers_with_the_sae_on_another_device(model, caches, saes):
    """Fails with `encode was handed a tensor on cpu` where an eval forgets to move."""
    sae, twin = saes
    here = run_evals(sae, model, LAYER, test_cache=caches[1], config=CONFIG, sae_b=twin)
    far, far_twin = Strict(moved(sae)), Strict(moved(twin))
    with elsewhere():
        there = run_evals(far, model, LAYER, test_cache=caches[1], config=CONFIG, sae_b=far_twin)
    assert far.calls > 0 and far_twin.calls > 0
    for name in EVALS:
        assert there[name]["eval_result_metrics"] == here[name]["eval_result_metrics"], name


def test_normalized_splice_and_check_causal_follow_the_sae(caches, saes):
    x = caches[1].acts[:2].float()
    far = Normalized(Strict(moved(saes[0])), 1.0)
    assert sae_device(far) == ELSEWHERE
    with elsewhere():
        spliced = splice(far, x)
        assert check_causal(far, x)["causal"]
    assert spliced.device == x.device
    torch.testing.assert_close(spliced, splice(saes[0], x))


def test_sae_device_reads_the_attribute_then_weights_then_tensors():
    class Bare:
        d_in = d_sae = 2

    linear = nn.Linear(2, 2, device="meta")
    buffers_only = nn.Module()
    buffers_only.register_buffer("mean", torch.zeros(2, device="meta"))
    assert sae_device(linear) == ELSEWHERE and sae_device(buffers_only) == ELSEWHERE
    assert sae_device(PCASAE(torch.randn(8, 4), k=2)) == torch.device("cpu")
    assert sae_device(Bare()) == torch.device("cpu")
    named = Bare()
    named.device = "meta"
    assert sae_device(named) == ELSEWHERE
