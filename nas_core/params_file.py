"""Reading a params file: YAML text, strictly (a key given twice is refused, `1e-5` is a float), with
one-line errors that name the file, the line and the key."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the field."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: fast
    """YAML 1.1 as PyYAML reads it, but `1e-5` is the float YAML 1.2 and every user means, not a string."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def yaml_kind(data: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(data), f"a {type(data).__name__}")


def _refuse_duplicate_keys(node: yaml.Node, where: tuple[str, ...], seen_nodes: set[int]) -> None:
    """YAML keeps the last of two equal keys silently; a params file that says a thing twice is refused."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    children = node.value if isinstance(node, yaml.MappingNode) else []
    lines: dict[tuple[str, str], int] = {}
    for key, value in children:
        name = key.value if isinstance(key, yaml.ScalarNode) else "?"
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            line = key.start_mark.line + 1
            if (key.tag, name) in lines:
                raise ParamsError(f"{'.'.join((*where, name))}: duplicate key (lines {lines[key.tag, name]} and "
                                  f"{line}); YAML would keep the last silently: say it once")
            lines[key.tag, name] = line
        _refuse_duplicate_keys(value, (*where, name), seen_nodes)
    for i, item in enumerate(node.value if isinstance(node, yaml.SequenceNode) else []):
        _refuse_duplicate_keys(item, (*where, str(i)), seen_nodes)


def parse_yaml(text: str, source: str, where: tuple[str, ...] = ()) -> Any:
    """YAML text as Python data; bad YAML or a duplicate key is a one-line ParamsError naming `source`
    (and the key, under `where`: the dotted path the text sits at)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, where, set())
        return loader.construct_document(node)
    except ParamsError as e:
        raise ParamsError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{source}: not valid YAML{at}: {problem}") from None
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """The params file's text; a missing, unreadable or binary file is a ParamsError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file (run in the project folder, or pass --params FILE)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a UTF-8 text file (byte {e.start}); a params file is YAML text") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot read the params file ({e.strerror})") from None
