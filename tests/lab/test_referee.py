"""The referee's own checks on an artifact: purity (no state, no batch mixing, decode of any
code) and safe loading. Small SAEs on random data: seconds, no model."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from saelab.artifact import ArtifactError, export_one, load_artifact, save_artifact
from saelab.referee import purity

D, F = 16, 48


class Linear(nn.Module):
    """An honest per-token SAE: ReLU code, linear decode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.W_enc = nn.Parameter(torch.randn(D, F) / D**0.5)
        self.W_dec = nn.Parameter(torch.randn(F, D) / F**0.5)

    def encode(self, x: Tensor) -> Tensor:
        return (x @ self.W_enc).relu()

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec


class Counter(Linear):
    """Carries state: every encode call bumps a buffer that shifts the next code."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def encode(self, x: Tensor) -> Tensor:
        self.calls.add_(1)
        return (x @ self.W_enc).relu() + self.calls


class BatchTopK(Linear):
    """Keeps the top k x tokens latents over the whole batch: a sequence's code depends on the
    other sequences (BatchTopK saved in training mode)."""

    def encode(self, x: Tensor) -> Tensor:
        pre = (x @ self.W_enc).relu()
        flat = pre.flatten()
        keep = flat >= flat.topk(4 * pre[..., 0].numel()).values.min()
        return (flat * keep).view_as(pre)


class StoresInput(Linear):
    """The 'perfect reconstruction' cheat: decode returns what encode was last given."""

    def encode(self, x: Tensor) -> Tensor:
        self.last = x
        return (x @ self.W_enc).relu()

    def decode(self, f: Tensor) -> Tensor:
        return self.last


def saved(sae: nn.Module, out_dir: Path) -> Path:
    save_artifact(sae.encode, sae.decode, torch.randn(2, 8, D), out_dir, owner=sae)
    return out_dir


def exported(sae: nn.Module, out_dir: Path) -> Path:
    """The programs written without save_artifact's own check: what a hostile experiment
    could hand in by calling torch.export itself."""
    out_dir.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 8, D)
    torch.export.save(export_one(sae.encode, x, sae), out_dir / "encode.pt2")
    torch.export.save(export_one(sae.decode, sae.encode(x).detach(), sae), out_dir / "decode.pt2")
    return out_dir


def test_an_honest_sae_is_pure(tmp_path):
    artifact = load_artifact(saved(Linear(), tmp_path))
    assert (artifact.d_in, artifact.d_sae) == (D, F)
    facts = purity(artifact, torch.randn(4, 10, D))
    assert facts == {"stateless": 1.0, "batch_independent": 1.0, "decodes_any_code": 1.0}


def test_state_carried_between_calls_is_caught(tmp_path):
    with pytest.raises(ArtifactError, match="do not reproduce"):
        saved(Counter(), tmp_path / "saved")  # the template's save path refuses it
    artifact = load_artifact(exported(Counter(), tmp_path / "exported"))
    assert artifact.mutated_buffers  # the graph says it writes a buffer
    assert purity(artifact, torch.randn(4, 10, D))["stateless"] == 0.0


def test_a_code_that_mixes_the_batch_is_caught(tmp_path):
    artifact = load_artifact(exported(BatchTopK(), tmp_path))
    facts = purity(artifact, torch.randn(4, 10, D))
    assert facts["batch_independent"] == 0.0 and facts["stateless"] == 1.0


def test_a_decode_that_returns_the_stored_input_cannot_be_handed_in(tmp_path):
    """Exported, decode is a function of its input alone: the stored tensor is either refused
    at export or becomes a constant that cannot follow another input."""
    try:
        artifact = load_artifact(exported(StoresInput(), tmp_path))
    except (ArtifactError, RuntimeError) as error:
        assert "torch.export" in str(error) or "reproduce" in str(error)
        return
    x = torch.randn(4, 10, D)
    facts = purity(artifact, x)
    assert min(facts.values()) == 0.0 or not torch.allclose(artifact.decode(artifact.encode(x)), x)


def test_a_missing_artifact_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(ArtifactError, match="encode.pt2 is missing: experiment.py must save"):
        load_artifact(tmp_path)


class _Plant:
    """Unpickling this writes a file: what a crafted artifact would run in the referee."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path(self.marker).write_text, ("pwned",))


def test_a_crafted_pickle_in_the_artifact_never_runs_in_the_referee(tmp_path):
    source = saved(Linear(), tmp_path / "honest")
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps(_Plant(str(marker)))
    with (
        zipfile.ZipFile(source / "encode.pt2") as good,
        zipfile.ZipFile(crafted / "encode.pt2", "w") as bad,
    ):
        for item in good.infolist():
            data = good.read(item)
            bad.writestr(
                item, payload if item.filename.endswith("sample_inputs/model.pt") else data
            )
    (crafted / "decode.pt2").write_bytes((source / "decode.pt2").read_bytes())

    def load(module: str) -> subprocess.CompletedProcess:
        load = f"from saelab.artifact import load_artifact; load_artifact({str(crafted)!r})"
        code = f"import {module}\n{load}"
        env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_WEIGHTS_ONLY_LOAD"}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)

    unguarded = load("saelab.artifact")  # the control: plain torch.export.load falls back
    planted = marker.exists()
    marker.unlink(missing_ok=True)
    refereed = load("saelab.referee")
    assert not marker.exists(), "the referee unpickled code from the artifact"
    assert refereed.returncode != 0 and b"cannot be loaded" in refereed.stderr
    assert planted or unguarded.returncode != 0  # the control shows what the guard prevents


def test_the_items_file_sits_beside_referee_json_with_its_digest(tmp_path):
    """What the orchestrator copies: referee.json names the items file and its sha256."""
    import hashlib
    import json

    from saelab.compare import load_items
    from saelab.referee import ITEMS_FILE, ITEMS_KEY, write_results

    entry = {"items": "abc", "form": "ratio", "num": [[1.0, 2.0]], "den": None}
    result = {
        "referee": {"artifact_sha256": "f00d", "lab_version": "1"},
        "core": {},
        ITEMS_KEY: {"core.eval_result_metrics.sparsity.l0": entry},
    }
    out = tmp_path / "referee.json"
    write_results(result, out, out.with_name(ITEMS_FILE))
    written = json.loads(out.read_text())
    items_path = tmp_path / ITEMS_FILE
    assert ITEMS_KEY not in written and written["referee"]["items_file"] == ITEMS_FILE
    digest = hashlib.sha256(items_path.read_bytes()).hexdigest()
    assert written["referee"]["items_sha256"] == digest
    items = load_items(items_path)
    assert items["metrics"]["core.eval_result_metrics.sparsity.l0"] == entry
    assert items["artifact_sha256"] == "f00d"
