"""The one console every user-facing line goes through (rich's process-wide console, so the
runner's live view and the loop's lines share one terminal)."""

from rich import get_console

console = get_console()
