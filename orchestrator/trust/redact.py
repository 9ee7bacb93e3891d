"""Secrets never leave agent code: text it produced (log lines, output tails, result-file
strings) is scrubbed before it reaches a prompt, the journal or notes.

Two kinds of secret are replaced by MARK: the value of every variable in the orchestrator's
environment whose name says it holds a credential (its provider keys, SCIENTIST_API_KEY,
HF_TOKEN, ...), and anything shaped like a provider key (`sk-...`, `hf_...`, `AKIA...`), which
catches a key the agent's code found elsewhere or was given in an edit.

    redactor = Redactor.from_environ()
    clean, count = redactor.scrub(b"...")
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.trust import safefs

MARK = b"[redacted]"
SECRET_NAMES = (  # fnmatch patterns against the upper-cased variable name
    "*_API_KEY", "*_TOKEN", "*_SECRET", "*_SECRET_KEY", "*_SECRET_ACCESS_KEY", "*_PASSWORD",
    "HUGGING_FACE_HUB_TOKEN", "SCIENTIST_API_KEY", "HF_TOKEN",
)  # fmt: skip
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") are settings, and would redact everything
# provider key prefixes followed by a long run of token characters (OpenAI, Anthropic, Hugging
# Face, GitHub, Slack, GitLab, Google); AWS access key ids have a fixed shape
KEY_SHAPED = (
    rb"(?:sk-|hf_|gh[opsur]_|github_pat_|xox[abposr]-|glpat-|AIza)[A-Za-z0-9_\-]{16,}"
    rb"|(?:AKIA|ASIA)[0-9A-Z]{16}"
)


@dataclass(frozen=True)
class Redactor:
    pattern: re.Pattern[bytes]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        """A redactor for the secrets in `environ` (default: the orchestrator's) and key shapes."""
        source = os.environ if environ is None else environ
        values = {
            value.encode()
            for name, value in source.items()
            if len(value) >= MIN_SECRET_CHARS
            and any(fnmatch.fnmatchcase(name.upper(), p) for p in SECRET_NAMES)
        }
        # longest first: a secret that contains another is replaced whole
        exact = [re.escape(v) for v in sorted(values, key=len, reverse=True)]
        return cls(re.compile(b"|".join([*exact, KEY_SHAPED])))

    def scrub(self, data: bytes) -> tuple[bytes, int]:
        """`data` with every secret replaced by MARK, and how many were."""
        return self.pattern.subn(MARK, data)

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode("utf-8", "surrogateescape"))[0].decode("utf-8", "replace")

    def scrub_json(self, value: Any) -> Any:
        """A JSON value (e.g. a result file agent code wrote) with its strings, keys included,
        scrubbed."""
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, list):
            return [self.scrub_json(v) for v in value]
        if isinstance(value, dict):
            return {self.scrub_text(k): self.scrub_json(v) for k, v in value.items()}
        return value


def run_files(run_dir: Path) -> dict[str, str]:
    """The sha256 of each file in a run dir by its name, scrubbed: agent code chose the names."""
    return Redactor.from_environ().scrub_json(safefs.file_digests(run_dir))


def read_json(path: Path) -> Any:
    """A JSON file in a dir agent code could write (its result file), read never through a
    link (safefs.Planted) and scrubbed; json's and the file system's errors pass through."""
    return Redactor.from_environ().scrub_json(safefs.read_json(Path(path)))
