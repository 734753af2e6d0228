"""A correction added in one folder plus one registry entry (tests/integration/delayed_bias/,
named in the shared tiny server's ``[corrections] extra``): the server validates it, the engine
runs it on every step of the rows that ask for it, and its report and step times come back,
with no edit anywhere else in corrigo."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from .tiny import completion

pytestmark = pytest.mark.engine

STEPS = 8
PROMPT = [1, 504, 3458, 314]


@pytest.fixture(scope="module")
def client(tiny_server):
    return OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused", max_retries=0)


def test_it_is_listed_and_validated_like_a_built_in(client):
    with pytest.raises(openai.BadRequestError) as err:
        completion(client, PROMPT, STEPS, {"delayed_bias": {"token": -1}})
    assert err.value.body["param"] == "correction.delayed_bias.token"
    with pytest.raises(openai.BadRequestError) as err:
        completion(client, PROMPT, STEPS, {"delayed_bias": {"token": 5, "sharpness": 1}})
    assert err.value.body["param"] == "correction.delayed_bias.sharpness"
    with pytest.raises(openai.BadRequestError) as err:
        completion(client, PROMPT, STEPS, {"no_such_thing": {}})
    assert "delayed_bias" in err.value.body["message"]  # named among those served


@pytest.mark.parametrize("stream", [False, True])
def test_the_engine_applies_it_from_its_step_and_reports_it(client, stream):
    (plain,), _ = completion(client, PROMPT, STEPS)
    token = next(t for t in range(100, 200) if t not in plain)  # one greedy never picks
    correction = {"delayed_bias": {"token": token, "from_step": 3, "bias": 1000.0}}
    (biased,), report = completion(client, PROMPT, STEPS, correction, stream=stream)
    assert biased[:3] == plain[:3] and biased[3:] == [token] * (STEPS - 3)
    assert report["plugins"] == ["delayed_bias"]
    assert report["delayed_bias"] == {"steps": STEPS, "boosted": STEPS - 3}


def test_its_step_time_is_a_metric(tiny_server, client):
    completion(client, PROMPT, 2, {"delayed_bias": {"token": 7}})
    text = httpx.get(f"{tiny_server.base_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    plugins = {s.labels.get("plugin") for s in families["corrigo_plugin_step_seconds"].samples}
    assert "delayed_bias" in plugins
