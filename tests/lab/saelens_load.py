"""Runs inside .venvs/saelens (the real sae-lens, not the lab): load each SAE folder with
SAE.load_from_disk and write its latents and reconstructions of x for the lab's tests to compare.

    python saelens_load.py X.safetensors OUT_DIR SAE_DIR...   # -> OUT_DIR/<name>.out.safetensors
"""

import sys
from pathlib import Path

import torch
from sae_lens import SAE
from safetensors.torch import load_file, save_file


def main(x_path: str, out_dir: str, *sae_dirs: str) -> None:
    torch.set_num_threads(1)  # the CPU is shared
    x = load_file(x_path)["x"]
    for sae_dir in map(Path, sae_dirs):
        sae = SAE.load_from_disk(sae_dir)
        with torch.no_grad():
            latents = sae.encode(x)
            recon = sae.decode(latents)
        facts = {"class": type(sae).__name__, "hook_name": sae.cfg.metadata.hook_name}
        out = Path(out_dir) / f"{sae_dir.name}.out.safetensors"
        save_file({"latents": latents, "recon": recon}, out, metadata=facts)


if __name__ == "__main__":
    main(*sys.argv[1:])
