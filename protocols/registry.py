"""Every protocol by name, and the shipped example files (loaded by memlab.protocol_run)."""

from __future__ import annotations

from pathlib import Path

from .readmap import ReadMap
from .tuning import TuneProtocol

PROTOCOLS = {cls.model_fields["protocol"].default: cls for cls in (ReadMap, TuneProtocol)}
EXAMPLES = Path(__file__).parent / "examples"


def shipped() -> dict[str, str]:
    """Example protocol files by name, with their first comment line."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out
