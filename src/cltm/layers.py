"""The one ``--layers`` grammar, used by every command and the Python API.

``all`` (or nothing) means every layer; otherwise a comma-separated list of layers and inclusive ranges:
``0,3,6-9``. Negative numbers count from the end as in Python (``-1`` is the last layer, ``-3--1`` the last
three). Layer 0 is the transformer input (DESIGN §3.2). The result is sorted and without repeats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")
GRAMMAR = "'all' or comma-separated layers and ranges such as 0,3,6-9 (negative = from the end, -1 = last)"


def layer_tokens(spec: str | Sequence[int] | None) -> list[int | tuple[int, int]] | None:
    """Check the syntax without knowing the number of layers: None for 'all', else the items and ranges.

    Raises ``ValueError`` naming the bad item and the grammar.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [int(x) for x in spec] or None
    if spec.strip().lower() in ("", "all"):
        return None
    tokens: list[int | tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = _RANGE.match(part)
        try:
            tokens.append((int(match[1]), int(match[2])) if match else int(part))
        except ValueError:
            raise ValueError(f"--layers: {part!r} is not a layer or range; expected {GRAMMAR}") from None
    if not tokens:
        raise ValueError(f"--layers: no layers in {spec!r}; expected {GRAMMAR}")
    return tokens


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve a layer spec against ``n_layers`` (hidden states incl. index 0) to a sorted list of layers."""
    tokens = layer_tokens(spec)
    if tokens is None:
        return list(range(n_layers))

    def resolve(layer: int) -> int:
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"--layers: layer {layer} is out of range; the features have {n_layers} layers "
                f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        return layer % n_layers

    out: set[int] = set()
    for token in tokens:
        if isinstance(token, tuple):
            lo, hi = resolve(token[0]), resolve(token[1])
            if hi < lo:
                empty = f"{token[0]}-{token[1]}"
                raise ValueError(f"--layers: the range {empty} is empty; write {token[1]}-{token[0]}")
            out.update(range(lo, hi + 1))
        else:
            out.add(resolve(token))
    return sorted(out)
