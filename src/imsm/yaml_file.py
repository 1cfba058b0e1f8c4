"""Reading YAML a person wrote (a `--config` file, an experiment file, a task spec, a `key=value`
option): one mapping, or one line that names the file and what is wrong with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from imsm.errors import IMSMError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as the number a person means. PyYAML follows YAML 1.1,
    whose floats need a dot (`1.0e-4`), so it reads `1e-4` as text, and a learning rate written that
    way would fail far from the file with a type error."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, with `1e-4` a number (YAML 1.2's reading) rather than text."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def read_yaml_mapping(path: str | Path, kind: str, holds: str) -> dict[str, Any]:
    """The mapping at the top of the YAML file `path` (an empty file is an empty mapping).

    Args:
        path: The file.
        kind: What the file is, for the messages ("config file", "experiment file").
        holds: What its mapping holds, for the message when it holds something else
            ("of option names to values").

    Raises:
        IMSMError: The file is missing, is not valid UTF-8 YAML, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise IMSMError(f"{kind} {str(path)!r} does not exist; pass the path of a YAML file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise IMSMError(f"{kind} {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise IMSMError(f"{kind} {str(path)!r} must hold a mapping {holds}")
    return raw
