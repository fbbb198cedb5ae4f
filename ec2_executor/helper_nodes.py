"""Covalent's own helper nodes get no instance: they run here, like Covalent's local executor.

For a list or dict passed to an electron (`:electron_list:`, `:electron_dict:`), an attribute
(`:f.__getattr__`), an item (`:f.__getitem__`) or an unpacked value (`:f()[0]`) of an electron's
result, Covalent adds a node that only packs or picks values, and gives it the executor of the
electron it serves. An instance for each would cost minutes and money for a dictionary lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from covalent._shared_files.defaults import prefix_separator
from covalent._workflow.transportable_object import TransportableObject

_COLLECTION_FUNCTIONS = frozenset({"_auto_list_node", "_auto_dict_node"})
"""The functions of the `:electron_list:` and `:electron_dict:` nodes; the other helpers'
functions are named with Covalent's prefix (`:f.__getitem__`, ...)."""
_COVALENT_MODULE = "covalent._workflow.electron"
"""Where Covalent defines every helper function (cloudpickle keeps `__module__`)."""


def helper_function(task: Any) -> Callable[..., Any] | None:
    """The helper's function if `task` (Covalent's wrapped callable) is a helper node, else None.

    The name is checked first, so a user's function is never unpickled on the server.
    """
    if not (isinstance(task, functools.partial) and task.args):
        return None
    transportable = task.args[0]
    if not isinstance(transportable, TransportableObject):
        return None
    name = str(transportable.attrs.get("name") or "")
    if not (name.startswith(prefix_separator) or name in _COLLECTION_FUNCTIONS):
        return None
    function = transportable.get_deserialized()
    if getattr(function, "__module__", None) != _COVALENT_MODULE:
        return None  # a user's function that happens to carry such a name
    return function


def run_here(
    function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> TransportableObject:
    """What Covalent's `wrapper_fn` does, minus the electron's hooks (deps, call_before/after):
    they belong to the user's function, not to a lookup in its result."""
    output = function(
        *(arg.get_deserialized() for arg in args),
        **{key: value.get_deserialized() for key, value in kwargs.items()},
    )
    return TransportableObject(output)
