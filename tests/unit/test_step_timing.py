"""Per-step plugin timings, as the report channel brings them, are exposed on /metrics as the
``corrigo_plugin_step_seconds`` histogram."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.step_timing import StepHistograms
from server.metrics import PluginStepCollector


def test_step_times_are_exposed_as_a_histogram_per_plugin():
    histograms = StepHistograms()
    for seconds in (0.0002, 0.003, 0.003, 7.0):
        histograms.record({"proxy_tuning": seconds})
    histograms.record({"copilot": 0.02})

    registry = CollectorRegistry()
    registry.register(PluginStepCollector(histograms))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {
        (s.name, s.labels.get("plugin"), s.labels.get("le")): s.value
        for s in families["corrigo_plugin_step_seconds"].samples
    }
    assert samples[("corrigo_plugin_step_seconds_count", "proxy_tuning", None)] == 4
    assert samples[("corrigo_plugin_step_seconds_bucket", "proxy_tuning", "0.00025")] == 1
    assert samples[("corrigo_plugin_step_seconds_bucket", "proxy_tuning", "0.005")] == 3
    assert samples[("corrigo_plugin_step_seconds_bucket", "proxy_tuning", "+Inf")] == 4
    assert abs(samples[("corrigo_plugin_step_seconds_sum", "proxy_tuning", None)] - 7.0062) < 1e-9
    assert samples[("corrigo_plugin_step_seconds_count", "copilot", None)] == 1


def test_nothing_recorded_exposes_an_empty_family():
    registry = CollectorRegistry()
    registry.register(PluginStepCollector(StepHistograms()))
    text = generate_latest(registry).decode()
    assert "corrigo_plugin_step_seconds_count" not in text
