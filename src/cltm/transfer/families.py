"""Language -> family map for Common Voice locales (shipped), overridable by a TSV or JSON file.

The shipped table (``data/cv_families.tsv``) covers the Common Voice locales, with Indo-European split into
its subfamilies (``Indo-European (Romance)``, ``(Germanic)``, ``(Slavic)``, ...), as in the published CLTM
figures, and follows the published legend where the two differ: Estonian is ``Uralic (Finnic)`` (with the
other Finnic languages: Finnish, Ingrian, Votic) and Armenian plain ``Indo-European``. Hyphenated locales
(``zh-HK``, ``sv-SE``, ``ga-IE``, ``es-AR``, ``hy-AM``) map via their base code unless listed themselves.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

DEFAULT_FAMILIES_FILE = "cv_families.tsv"


def _parse_tsv(text: str, source: str) -> dict[str, str]:
    """Rows ``locale<TAB>[name<TAB>]family``; '#' comments and a header line starting with ``locale``
    skipped."""
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if (
            not stripped
            or stripped.startswith("#")
            or stripped.split("\t")[0].strip().lower() in ("locale", "language")
        ):
            continue
        parts = (
            [p.strip() for p in line.split("\t")] if "\t" in line else [p.strip() for p in line.split(",")]
        )
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            raise ValueError(
                f"{source}:{lineno}: expected `language<TAB>family` (or language, name, family), got {line!r}"
            )
        mapping[parts[0]] = parts[-1]
    return mapping


def default_families() -> dict[str, str]:
    """The shipped Common Voice locale -> family map."""
    text = (
        resources.files("cltm.transfer").joinpath("data", DEFAULT_FAMILIES_FILE).read_text(encoding="utf-8")
    )
    return _parse_tsv(text, DEFAULT_FAMILIES_FILE)


def load_families(path: str | Path | None = None, *, extend_default: bool = True) -> dict[str, str]:
    """Read a language -> family map from a JSON object or a TSV/CSV file (``language, [name,] family``).

    With ``extend_default`` the file's entries override/extend the shipped Common Voice map; otherwise only
    the file is used. ``path=None`` gives the shipped map.
    """
    base = default_families() if extend_default or path is None else {}
    if path is None:
        return base
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"families file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        obj = json.loads(text)
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise ValueError(f"{p}: expected a JSON object mapping language -> family name")
        override = {str(k).strip(): v.strip() for k, v in obj.items()}
    else:
        override = _parse_tsv(text, str(p))
    return {**base, **override}


def family_of(language: str, families: dict[str, str] | None = None) -> str | None:
    """The family of a language code: exact match, then case-insensitive, then the base of a hyphenated
    locale."""
    families = default_families() if families is None else families
    if language in families:
        return families[language]
    lowered = {k.lower(): v for k, v in families.items()}
    code = language.lower().replace("_", "-")
    if code in lowered:
        return lowered[code]
    base = code.split("-")[0]
    return lowered.get(base)


def families_for(languages: list[str], families: dict[str, str] | None = None) -> dict[str, str | None]:
    """Family of each language (None when unknown)."""
    families = default_families() if families is None else families
    return {lang: family_of(lang, families) for lang in languages}
