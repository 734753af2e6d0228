"""The per-step pipeline: plugin order, row selection, and rows followed through the batch."""

import pytest
import torch

from decoding.contract import Correction
from decoding.correction import parse_correction
from decoding.params import CorrectionParams
from decoding.pipeline import CorrectionPipeline, Row, StepPlugin
from decoding.registry import Registry


class Mark(CorrectionParams):
    value: float = 0.0


def _marked(correction_name):
    class Marked(Correction):
        name = correction_name
        params = Mark

        def plugin(self, setup):
            return Recorder(self.name)

    return Marked()


#: Three corrections with the built-ins' names, in the built-ins' order.
REGISTRY = Registry(tuple(_marked(n) for n in ("proxy_tuning", "copilot", "unlearning")))


class Recorder(StepPlugin):
    """Adds its rows' ``value`` to column 0 and records what it saw, in call order."""

    calls: list = []

    def __init__(self, name):
        self.name = name
        self.released = []

    def apply(self, logits, rows):
        Recorder.calls.append((self.name, [r.uid for r in rows]))
        logits[:, 0] += torch.tensor([r.params(self.name).value for r in rows])
        return logits

    def release(self, uid):
        self.released.append(uid)


@pytest.fixture
def plugins():
    Recorder.calls = []
    return {c.name: c.plugin(None) for c in REGISTRY}  # the registry's order


def spec(**values):
    return parse_correction({n: {"value": v} for n, v in values.items()}, registry=REGISTRY)


def test_plugins_run_in_pipeline_order_on_their_rows_only(plugins):
    pipeline = CorrectionPipeline(plugins)
    pipeline.add(0, spec(unlearning=1.0, proxy_tuning=2.0), [1], [])
    pipeline.add(2, spec(copilot=4.0), [1], [])
    pipeline.add(1, parse_correction({}, registry=REGISTRY), [1], [])  # plain: not tracked
    assert set(pipeline.rows) == {0, 2}
    logits = torch.zeros(3, 4)
    pipeline.apply(logits)
    assert [name for name, _ in Recorder.calls] == ["proxy_tuning", "copilot", "unlearning"]
    assert logits[:, 0].tolist() == [3.0, 0.0, 4.0]  # the plain row 1 untouched
    assert torch.all(logits[:, 1:] == 0)


def test_empty_batch_returns_the_same_tensor(plugins):
    logits = torch.randn(2, 3)
    assert CorrectionPipeline(plugins).apply(logits) is logits


def test_rows_keep_their_uid_through_moves_and_release_on_removal(plugins):
    pipeline = CorrectionPipeline(plugins)
    pipeline.add(0, spec(copilot=1.0), [1], [])
    pipeline.add(1, spec(copilot=2.0), [1], [])
    pipeline.add(2, spec(copilot=3.0), [1], [])
    uids = {i: r.uid for i, r in pipeline.rows.items()}

    pipeline.remove(1)
    pipeline.move(2, 1, swap=False)
    assert {i: r.uid for i, r in pipeline.rows.items()} == {0: uids[0], 1: uids[2]}
    assert plugins["copilot"].released == [uids[1]]

    pipeline.move(0, 1, swap=True)
    assert {i: r.uid for i, r in pipeline.rows.items()} == {0: uids[2], 1: uids[0]}

    pipeline.add(
        0, parse_correction({}, registry=REGISTRY), [5], []
    )  # a plain request takes the slot over
    assert plugins["copilot"].released == [uids[1], uids[2]]
    assert set(pipeline.rows) == {1}


def test_a_plugin_used_by_every_row_sees_them_in_batch_order_after_a_swap(plugins):
    pipeline = CorrectionPipeline(plugins)
    pipeline.add(0, spec(copilot=1.0), [1], [])
    pipeline.add(1, spec(copilot=2.0), [1], [])
    pipeline.move(0, 1, swap=True)  # row 1's request now sits at index 0
    logits = torch.zeros(2, 3)
    out = pipeline.apply(logits)
    [(_, uids)] = Recorder.calls
    assert uids == [pipeline.rows[0].uid, pipeline.rows[1].uid]
    assert out[:, 0].tolist() == [2.0, 1.0]


def test_live_output_lists_are_seen(plugins):
    pipeline = CorrectionPipeline(plugins)
    out = []
    pipeline.add(0, spec(copilot=0.0), [7, 8], out)
    out.append(9)
    row: Row = pipeline.rows[0]
    assert len(row.stream) == 3 and row.stream.last == 9 and row.stream.tokens() == [7, 8, 9]


def test_plugins_run_in_the_order_given():
    Recorder.calls = []
    pipeline = CorrectionPipeline({"b": Recorder("b"), "a": Recorder("a")})
    both = parse_correction({}, registry=REGISTRY).with_step("a", Mark()).with_step("b", Mark())
    pipeline.add(0, both, [1], [])
    pipeline.apply(torch.zeros(1, 2))
    assert [name for name, _ in Recorder.calls] == ["b", "a"]
