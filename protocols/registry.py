"""Every protocol by name, the shipped example files, and loading one from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from .base import PlanError
from .readmap import ReadMap
from .tuning import TuneProtocol

PROTOCOLS = {cls.model_fields["protocol"].default: cls for cls in (ReadMap, TuneProtocol)}
EXAMPLES = Path(__file__).parent / "examples"

_ANY = TypeAdapter(Annotated[Union[tuple(PROTOCOLS.values())], Field(discriminator="protocol")])


def shipped() -> dict[str, str]:
    """Example protocol files by name, with their first comment line."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def load_protocol(name_or_path: str):
    """A protocol from a YAML file or a shipped example's name; one line naming the file and
    the field if it is not a valid protocol. Files it names are relative to its folder."""
    path = Path(name_or_path)
    if not path.exists() and (EXAMPLES / f"{name_or_path}.yaml").exists():
        path = EXAMPLES / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{name_or_path}: no such protocol file or shipped protocol "
                        f"(shipped: {', '.join(shipped())})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: cannot read the file ({exc})") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or "protocol" not in data:
        raise PlanError(f"{path}: a protocol file is a YAML mapping whose `protocol` is one of "
                        f"{', '.join(PROTOCOLS)}")
    if data["protocol"] not in PROTOCOLS:
        raise PlanError(f"{path}: protocol: unknown protocol {data['protocol']!r} (known: {', '.join(PROTOCOLS)})")
    try:
        return _ANY.validate_python(data).relative_to(path.parent)
    except ValidationError as exc:
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
        prefix = f"{data['protocol']}."
        raise PlanError(f"{path}: " + "; ".join(part.removeprefix(prefix) for part in text.split("; "))) from None
