"""The `cltm` command line: one sub-command (or group) per pipeline stage.

Each stage lives in its own module here and exposes ``register(app)`` plus an integer ``ORDER`` that fixes
where it appears in ``cltm --help``. Modules are discovered, so adding a stage never means editing this file.
The CLI is thin: parse, call the library, print.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer
from typer.core import TyperGroup

# command name -> the ORDER of the module that registered it (filled by _register_stages)
_STAGE_ORDER: dict[str, int] = {}


class _StageOrderedGroup(TyperGroup):
    """Lists commands and groups in pipeline order (typer would put all groups after all commands)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: _STAGE_ORDER.get(name, 1000))


app = typer.Typer(
    cls=_StageOrderedGroup,
    name="cltm",
    help=(
        "Cross-Lingual Transfer Matrices, per layer, from self-supervised speech models.\n\n"
        "Pipeline: corpus manifest -> extract (GPU, once) -> embedding cache (Zarr) -> probes (CPU, seconds) "
        "-> CLTM per layer -> report. Run `cltm demo` to see all of it on a built-in synthetic corpus."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_stages() -> None:
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        before = _registered_names()
        module.register(app)
        for name in _registered_names() - before:
            _STAGE_ORDER[name] = getattr(module, "ORDER", 100)


def _registered_names() -> set[str]:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    groups = {g.name or g.typer_instance.info.name for g in app.registered_groups}
    return commands | groups


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the cltm version and exit."),
) -> None:
    if version:
        from cltm import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


_register_stages()


def main() -> None:
    app()
