"""Per-step plugin timings cross from the engine process to /metrics through mapped files."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.step_timing import StepTimings, read_totals
from server.metrics import PluginStepCollector


def test_timings_recorded_in_one_process_are_exposed_by_another(tmp_path):
    writer = StepTimings(["proxy_tuning", "copilot"], tmp_path)
    for seconds in (0.0002, 0.003, 0.003, 7.0):
        writer.observe("proxy_tuning", seconds)
    writer.observe("copilot", 0.02)

    totals = dict(read_totals(tmp_path))
    assert totals["proxy_tuning"][:-1].sum() == 4 and totals["copilot"][:-1].sum() == 1

    registry = CollectorRegistry()
    registry.register(PluginStepCollector(str(tmp_path)))
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


def test_without_a_directory_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("_CORRIGO_STEP_METRICS", raising=False)
    writer = StepTimings(["proxy_tuning"])
    writer.observe("proxy_tuning", 1.0)
    assert writer.array is None
