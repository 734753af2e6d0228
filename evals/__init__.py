"""Evaluations behind ``corrigo eval``: task suites shipped in ``evals/suites/`` and their
runners, which talk to a corrigo server over its OpenAI API."""
