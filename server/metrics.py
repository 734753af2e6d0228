"""corrigo's Prometheus metrics (``corrigo_*``), exposed beside vLLM's ``vllm:*`` series.

vLLM records its metrics in this process's default registry and unregisters everything named
``vllm:*`` when an engine starts, so corrigo's series use their own prefix.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily

from adapters.step_timing import BUCKETS, StepHistograms

# Latency buckets (seconds) sized for CPU and GPU serving alike: 10 ms .. 10 min.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)


class ServerMetrics:
    """The metric families the server records; one instance per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "corrigo_requests",
            "Requests answered, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "corrigo_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "corrigo_time_to_first_token_seconds",
            "Streaming requests: time from receiving the request to its first generated token.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.plugin_requests = Counter(
            "corrigo_plugin_requests",
            "Requests served with a correction plugin, by plugin.",
            ["plugin"],
            registry=registry,
        )
        self.unlearning_gate = Counter(
            "corrigo_unlearning_gate",
            "Unlearning gate decisions, by forget set (its public name or alias, else "
            "'undisclosed'), decision (filter: the request concerns the set and is "
            "filtered; pass: it decodes unchanged) and the gate that decided (cosine: the "
            "similarity threshold; classifier: the set's trained gate).",
            ["forget_set", "decision", "gate"],
            registry=registry,
        )
        self.unlearning_gate_score = Histogram(
            "corrigo_unlearning_gate_score",
            "The unlearning gate's score per gated request (cosine similarity, or the trained "
            "gate's probability), by forget set (public label) and gate.",
            ["forget_set", "gate"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=registry,
        )
        self.unlearning_outcomes = Counter(
            "corrigo_unlearning_outcomes",
            "Gated requests by forget set (its public label) and outcome: refused (answered "
            "with the set's refusal, no generation), abstained (a row was forced through the "
            "abstention phrase), steered (filtered, no abstention), passed (gate closed).",
            ["forget_set", "outcome"],
            registry=registry,
        )
        self.tokens_blocked = Counter(
            "corrigo_tokens_blocked",
            "Steps whose most likely token the unlearning filters banned.",
            registry=registry,
        )
        self.generated_tokens = Counter(
            "corrigo_generated_tokens",
            "Completion tokens generated, as reported in each response's usage.",
            ["model", "endpoint"],
            registry=registry,
        )
        self.refinement_rounds = Histogram(
            "corrigo_refinement_rounds",
            "Candidate answers a refinement loop produced (the draft included), by strategy.",
            ["strategy"],
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 16, 32, 64),
            registry=registry,
        )
        self.verifier_verdicts = Counter(
            "corrigo_verifier_verdicts",
            "Refinement verdicts, by verifier and verdict (accepted, rejected, error).",
            ["verifier", "verdict"],
            registry=registry,
        )
        self.refinement_flips = Counter(
            "corrigo_refinement_flips",
            "Refinements whose answer changed correctness against known truth, by strategy and "
            "direction (incorrect_to_correct, correct_to_incorrect).",
            ["strategy", "flip"],
            registry=registry,
        )
        self.requests_running = Gauge(
            "corrigo_requests_running",
            "Generation requests holding a running slot (limits.max_running_requests).",
            registry=registry,
        )
        self.requests_waiting = Gauge(
            "corrigo_requests_waiting",
            "Generation requests waiting for a running slot (limits.max_waiting_requests).",
            registry=registry,
        )


_default: ServerMetrics | None = None


def server_metrics() -> ServerMetrics:
    """The process-wide metrics on the default registry (created once)."""
    global _default
    if _default is None:
        _default = ServerMetrics()
    return _default


class PluginStepCollector:
    """Exposes the engine's per-step plugin timings, as the report channel brings them
    (adapters/step_timing.py), as ``corrigo_plugin_step_seconds{plugin}``."""

    def __init__(self, histograms: StepHistograms) -> None:
        self.histograms = histograms

    def collect(self):
        family = HistogramMetricFamily(
            "corrigo_plugin_step_seconds",
            "Time a correction plugin takes per engine step, for all the rows using it.",
            labels=["plugin"],
        )
        for plugin, row in self.histograms.totals():
            counts = np.cumsum(row[:-1])
            buckets = [(str(b), c) for b, c in zip(BUCKETS, counts[:-1], strict=True)]
            buckets.append(("+Inf", counts[-1]))
            family.add_metric([plugin], buckets, sum_value=row[-1])
        yield family
