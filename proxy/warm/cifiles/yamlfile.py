"""Reading YAML CI files with PyYAML's safe loader, and its errors as one line naming the file and line."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["CIFileError", "load_documents"]


class CIFileError(Exception):
    """A CI file that cannot be read or parsed; the message is the one line the operator sees."""


class _Loader(yaml.SafeLoader):
    """The safe loader, plus: a tag it does not know is read as the plain value under it.

    GitLab's ``!reference``, compose's ``!reset``/``!override`` and CloudFormation-style tags are common in real
    CI files, and the safe loader refuses any unknown tag outright; none of them builds anything but data here.
    """


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node, deep=True)


_Loader.add_multi_constructor("!", _untagged)


def load_documents(text: str, name: str) -> list[Any]:
    """Every document of a YAML stream (Kubernetes files hold several); empty ones are left out."""
    try:
        return [document for document in yaml.load_all(text, Loader=_Loader) if document is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f": line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise CIFileError(f"{name}{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise CIFileError(f"{name}: invalid YAML: {exc}") from None
