"""``python -m cltm.finetune ARGS`` == ``cltm finetune ARGS``: the entry point for ``torchrun -m`` and
``accelerate launch -m``, which start one process per GPU and need a module to run."""

from __future__ import annotations

import sys


def main() -> None:
    from cltm.cli import app

    app(args=["finetune", *sys.argv[1:]], prog_name="cltm")


if __name__ == "__main__":
    main()
