"""The CLI's one error helper and exit-code convention.

Exit codes: 0 ok; 1 the work failed or is partial (some inputs could not be processed, nothing computed);
2 usage (a bad option, a missing or malformed input file: fix the command and run it again).
Library code raises ordinary exceptions with a message that names the problem and the fix; the CLI turns them
into one red line on stderr and the exit code, never a traceback.
"""

from __future__ import annotations

import typer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` to stderr and return the ``typer.Exit`` to raise (``raise fail(...)``)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}")
    return typer.Exit(code)
