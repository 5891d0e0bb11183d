"""Read a policy file (JSON or YAML, ours or PolicyLayer Intercept's) into one Policy, or say
everything that is wrong with it.

Every problem names the file, the JSON path and what to do; all problems are reported at
once so one `mcp-authz validate` run shows the whole list. Unknown keys are errors: a typo
in a security policy must never silently mean "no rule".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from authz.policy.intercept import InterceptReader, is_intercept
from authz.policy.model import Policy
from authz.policy.native import NativeReader
from authz.policy.reader import Pairs, Problem, Reader


class PolicyError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p.path}: {p.message}" for p in problems))


def load_policy(path: Path) -> Policy:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PolicyError(str(path), [Problem("$", f"cannot read the file: {e.strerror}")]) from e
    return parse_policy(data, str(path))


def parse_policy(data: bytes, source: str) -> Policy:
    raw = _parse_text(data, source)
    version = "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    reader: Reader = InterceptReader() if is_intercept(raw) else NativeReader()
    policy = reader.policy(raw, source, version)
    if reader.problems:
        raise PolicyError(source, reader.problems)
    return policy


def _parse_text(data: bytes, source: str) -> Any:
    try:
        text = data.decode("utf-8")
        if source.endswith((".yaml", ".yml")):
            return yaml.load(text, Loader=_PairsLoader)  # noqa: S506 - a SafeLoader subclass
        return json.loads(text, object_pairs_hook=Pairs)
    except UnicodeDecodeError as e:
        raise PolicyError(source, [Problem("$", f"not UTF-8: {e.reason}")]) from e
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise PolicyError(source, [Problem("$", f"invalid JSON at {where}: {e.msg}")]) from e
    except yaml.YAMLError as e:
        raise PolicyError(source, [Problem("$", f"invalid YAML: {e}")]) from e


class _PairsLoader(yaml.SafeLoader):
    pass


def _construct_pairs(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Pairs:
    loader.flatten_mapping(node)
    return Pairs(
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    )


_PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs)
