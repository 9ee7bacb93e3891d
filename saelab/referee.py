"""The referee: measures a run's exported SAE in its own process, with the lab's pinned settings.

    python -m saelab.referee results/<ws>/run_1 --out /tmp/referee.json --profile cpu \
        [--items-out /tmp/referee_items.json]

It never imports workspace code: it loads `encode.pt2` / `decode.pt2` (saelab.artifact), checks
that they behave like an SAE (purity), and runs core, sparse probing, unlearning and temporal
evals on the lab's held-out split with the model, layer, sequence length and eval sizes of the
profile (saelab.profiles), whatever the experiment trained on. A twin SAE handed in under
`twin/` is measured for feature stability. Writes one JSON object:

    {"referee": {lab_version, profile, artifact_sha256, twin_sha256, n_weights, purity,
                 learning, dashboards_sha256, seconds, items_sha256, items_file}, "core": {...},
     "sparse_probing": {...}, "unlearning": {...}, "temporal": {...}}

and, at --items-out (default referee_items.json beside --out), every key metric's per-item
values (format saelab-items/1, read by saelab.compare without torch), whose sha256 is
referee.items_sha256; and, beside --out, the feature dashboards (saelab.dashboards) whose
digest it records.

Purity facts (1.0 holds, 0.0 violated), each a template rule:
    stateless         no buffer is written by a call, and the same input gives the same output
    batch_independent a sequence's latents and reconstruction do not depend on the others in
                      the batch (encode and decode commute with permuting the batch)
    decodes_any_code  decode works on a sparse code encode did not produce (finite, right shape)
Learning facts (saelab.learning), measured from the artifact alone: `variance_ratio`, the held-
out variance along the live latents' decoder directions over that along random directions
(~1 at a random init), and `live_fraction`; the template's learning rule reads the first.
A problem the user can fix (missing or unloadable artifact) is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# before torch is imported: torch.export.load must never fall back to full unpickling
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import Tensor  # noqa: E402

from saelab import dashboards  # noqa: E402
from saelab.activations import ActivationCache, harvest_split  # noqa: E402
from saelab.artifact import FILES, ArtifactError, ExportedSAE, load_artifact, sha256_files  # noqa: E402
from saelab.cache import SaelabError  # noqa: E402
from saelab.compare import FORMAT as ITEMS_FORMAT  # noqa: E402
from saelab.evals import EVALS, run_evals  # noqa: E402
from saelab.learning import learning  # noqa: E402
from saelab.models import LanguageModel, load_model  # noqa: E402
from saelab.profiles import Profile, profile  # noqa: E402

console = Console(stderr=True)
LAB = Path(__file__).resolve().parent
TWIN_DIR = "twin"
ITEMS_FILE = "referee_items.json"  # beside referee.json: per-item values (saelab.compare)

ITEMS_KEY = "_items"  # measure() hands the items to main under this key
PURITY_SEQS = 4  # held-out sequences the purity checks run on


def lab_version() -> str:
    """sha256 of the lab's own source (saelab/**/*.py): which code measured a run."""
    digest = hashlib.sha256()
    for path in sorted(LAB.rglob("*.py")):
        digest.update(path.relative_to(LAB).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def purity(sae: ExportedSAE, x_BLD: Tensor) -> dict[str, float]:
    """The purity facts of the module docstring, on held-out residuals x [B >= 2, L, D]; a
    check the artifact crashes on counts as failed."""
    checks = {
        "stateless": _stateless,
        "batch_independent": _batch_independent,
        "decodes_any_code": _decodes_any_code,
    }
    facts = {}
    for name, check in checks.items():
        try:
            facts[name] = float(check(sae, x_BLD))
        except Exception:  # any failure of the artifact's own code is a failed check
            facts[name] = 0.0
    return facts


def _stateless(sae: ExportedSAE, x_BLD: Tensor) -> bool:
    f1, f2 = sae.encode(x_BLD), sae.encode(x_BLD)
    same = torch.equal(f1, f2) and torch.equal(sae.decode(f1), sae.decode(f1))
    return same and not sae.mutated_buffers


def _batch_independent(sae: ExportedSAE, x_BLD: Tensor) -> bool:
    """Each sequence alone gives the rows it gets in the batch, in any batch order (a batch-
    level top-k commutes with permuting the batch, so the single-sequence part is needed)."""
    f_BLF = sae.encode(x_BLD)
    x_hat_BLD = sae.decode(f_BLF)
    perm = torch.arange(x_BLD.shape[0] - 1, -1, -1)  # reversed: every row moves when B >= 2
    alone = [(sae.encode(x_BLD[i : i + 1]), sae.decode(f_BLF[i : i + 1])) for i in range(2)]
    return (
        torch.allclose(sae.encode(x_BLD[perm]), f_BLF[perm], atol=1e-5)
        and torch.allclose(sae.decode(f_BLF[perm]), x_hat_BLD[perm], atol=1e-4)
        and all(torch.allclose(f, f_BLF[i : i + 1], atol=1e-5) for i, (f, _) in enumerate(alone))
        and all(
            torch.allclose(x, x_hat_BLD[i : i + 1], atol=1e-4) for i, (_, x) in enumerate(alone)
        )
    )


def _decodes_any_code(sae: ExportedSAE, x_BLD: Tensor) -> bool:
    f_BLF = sae.encode(x_BLD)
    code = torch.zeros_like(f_BLF)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(sae.d_sae, (*f_BLF.shape[:-1], 8), generator=generator)
    code.scatter_(-1, index, torch.rand(index.shape, generator=generator) * f_BLF.abs().max())
    other = sae.decode(code)
    return other.shape == x_BLD.shape and bool(torch.isfinite(other).all())


def measure(
    run_dir: Path, lab: Profile, evals: tuple[str, ...] = EVALS, out: Path | None = None
) -> dict:
    """Everything the referee writes for `run_dir` (see the module docstring); with `out`,
    the feature dashboards are written beside it."""
    start = time.perf_counter()
    sae = load_artifact(run_dir)
    twin_dir = run_dir / TWIN_DIR
    twin = load_artifact(twin_dir) if (twin_dir / FILES[0]).exists() else None
    model = load_model(lab.model_name)
    if sae.d_in != model.d_model:
        raise ArtifactError(
            f"the SAE reads {sae.d_in}-dim inputs but {lab.model_name} layer {lab.layer} has "
            f"{model.d_model}: train on the lab's model ({lab.model_name})"
        )
    train, test = harvest_split(
        model, lab.layer, lab.corpus, lab.seq_len, lab.cache_tokens, lab.test_fraction
    )
    # dead / rare latents over every cached token (training rows, then held-out), the SAE alone
    every = dataclasses.replace(
        test,
        acts=torch.cat([train.acts, test.acts]),
        tokens=torch.cat([train.tokens, test.tokens]),
    )
    facts = purity(sae, test.acts[:PURITY_SEQS].float())
    items: dict = {}
    blocks = run_evals(
        sae,
        model,
        lab.layer,
        evals,
        test_cache=test,
        config=lab.eval_config(),
        sae_b=twin,
        items=items,
        density_cache=every,
    )
    record = {
        "lab_version": lab_version(),
        "profile": vars(lab),
        "artifact_sha256": sha256_files([run_dir / name for name in FILES]),
        "twin_sha256": sha256_files([twin_dir / name for name in FILES]) if twin else None,
        "n_weights": sae.n_weights,
        "purity": facts,
        "learning": learning(sae, test.acts.float()),
        "dashboards_sha256": _dashboards(sae, model, test, out),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return {"referee": record, **blocks, ITEMS_KEY: items}


def write_results(result: dict, out: Path, items_out: Path) -> None:
    """referee.json at `out` and the items file (saelab.compare) at `items_out`; referee.json
    records the items file's sha256, so a swapped items file is detectable."""
    items = {
        "format": ITEMS_FORMAT,
        "artifact_sha256": result["referee"]["artifact_sha256"],
        "lab_version": result["referee"]["lab_version"],
        "metrics": result.pop(ITEMS_KEY),
    }
    blob = json.dumps(items, separators=(",", ":")).encode()
    items_out.write_bytes(blob)
    result["referee"]["items_sha256"] = hashlib.sha256(blob).hexdigest()
    result["referee"]["items_file"] = items_out.name
    out.write_text(json.dumps(result, indent=2, default=float))


def _dashboards(
    sae: ExportedSAE, model: LanguageModel, test: ActivationCache, out: Path | None
) -> str | None:
    """saelab.dashboards for the artifact on the held-out split, written beside `out`;
    returns their sha256 (None without `out`)."""
    if out is None:
        return None
    unembed = model.hf_model.get_output_embeddings().weight
    data = dashboards.build(
        sae, test.acts, test.tokens, unembed, lambda i: model.tokenizer.decode([i])
    )
    return dashboards.write(data, out.with_name(dashboards.DASHBOARDS_FILE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--profile", default="cpu", help="saelab.profiles name: cpu|tiny|gpu")
    parser.add_argument("--evals", default=",".join(EVALS))
    parser.add_argument(
        "--items-out",
        type=Path,
        help="where to write the per-item values (default: referee_items.json beside --out)",
    )
    args = parser.parse_args(argv)
    try:
        result = measure(
            args.run_dir.resolve(), profile(args.profile), tuple(args.evals.split(",")), args.out
        )
    except (ArtifactError, SaelabError, ValueError) as error:
        console.print(f"[red]referee:[/] {error}", highlight=False)
        return 2
    items_out = args.items_out or args.out.with_name(ITEMS_FILE)
    write_results(result, args.out, items_out)
    console.print(f"referee: measured {args.run_dir} in {result['referee']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
