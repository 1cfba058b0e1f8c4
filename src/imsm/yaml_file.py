"""Reading a YAML file a person wrote (a `--config` file, an experiment file): one mapping, or one
line that names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imsm.errors import IMSMError


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
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise IMSMError(f"{kind} {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise IMSMError(f"{kind} {str(path)!r} must hold a mapping {holds}")
    return raw
