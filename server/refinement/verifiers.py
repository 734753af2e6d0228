"""Every verifier type a corrigo server has, listed explicitly.

decoding/refinement/verifier_types.py lists the pure built-ins; the ones here reach the
outside world (a sandbox, the network), so they live on the server's side; the operator's
plugins (``[verifiers.NAME]``, verifier_plugins.py) come last. Nothing registers itself by
being imported: a server's types are this list, declared in its validation context
(configure.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from decoding.refinement.verifier import VerifierType, VerifierTypes
from decoding.refinement.verifier_types import BUILTIN_VERIFIER_TYPES

from .python_tests import PYTHON_TESTS
from .verifier_plugins import VerifierPluginError
from .webhook import WEBHOOK

#: The built-in verifier types that reach the outside world.
OUTSIDE_WORLD_VERIFIER_TYPES: tuple[VerifierType, ...] = (PYTHON_TESTS, WEBHOOK)

#: The built-in verifier types of every server.
SERVER_VERIFIER_TYPES: VerifierTypes = BUILTIN_VERIFIER_TYPES + OUTSIDE_WORLD_VERIFIER_TYPES


def server_verifier_types(plugins: Iterable[VerifierType] = ()) -> VerifierTypes:
    """The built-ins and the operator's ``plugins``; a plugin may not take a built-in's name
    (:class:`VerifierPluginError`, a start-up error)."""
    plugins = tuple(plugins)
    for plugin in plugins:
        if plugin.name in SERVER_VERIFIER_TYPES:
            raise VerifierPluginError(
                f"verifier '{plugin.name}': a built-in verifier type has that name"
            )
    try:
        return SERVER_VERIFIER_TYPES + plugins
    except ValueError as exc:  # a reserved name ('all', 'any')
        raise VerifierPluginError(str(exc)) from None
