"""Refinement's home on the server: the request-level wrapper around the per-step path.

A request whose correction asks for refinement (``CorrectionSpec.refinement``) is driven by
driver.py, which runs decoding/refinement's loop with this server's engine as its ``generate``; configure.py declares
the server's caps, URL allow-list, judges and verifier types for validation. Beside it live
the verifiers that touch the outside world: python_tests (the sandbox/ subpackage), webhook
and remote judges (outbound.py, remote_model.py), and the operator's plugins
(verifier_plugins.py); verifiers.py lists every verifier type a server has.

Nothing is imported here: importing a submodule (the sandbox's, from server/config.py) must
not pull in the driver.
"""
