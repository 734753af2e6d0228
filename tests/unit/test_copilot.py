"""Copilot rectification: the fusion rule, request validation, the pilot binding, the
checkpoint, the plugin stepping a real copilot through the auxiliary runner's KV cache, and
the trainer (mistake log, RMSE training, resumption) on a tiny random pilot."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from adapters.copilot_training import (
    MistakeLog,
    TrainingError,
    TrainSettings,
    encode,
    read_pairs,
    tail_bound,
    train,
)
from adapters.default_model import ensure_default_model
from decoding.aux.dtypes import dtype_name
from decoding.aux.packed import pack_linears, packs
from decoding.aux.ragged import ATTENTION, Packed, RowCache, Segment, ragged_attention
from decoding.copilot.binding import Binding, BindingError, weights_fingerprint
from decoding.copilot.checkpoint import CheckpointError, read, save
from decoding.copilot.fusion import RectificationFusion
from decoding.copilot.model import Copilot, PilotFeatures
from decoding.copilot.params import COPILOTS_CONTEXT
from decoding.copilot.plugin import CopilotRectification
from decoding.copilot.runner import CopilotConfigError, CopilotRunner, check_binding
from decoding.correction import decode_wire, parse_correction
from decoding.params import CorrectionError
from decoding.pipeline import Row, TokenStream

from ..support import make_tiny_llama, tiny_llama_config

CONTEXT = {COPILOTS_CONTEXT: {"fix", "other"}}


# -- fusion ---------------------------------------------------------------------------------------


def test_logit_fusion_adds_lambda_times_f():
    s, f = torch.randn(3, 7), torch.randn(3, 7)
    lam = torch.tensor([0.0, 1.0, 2.5])
    out = RectificationFusion("logits")(s, f, lam)
    torch.testing.assert_close(out, s + lam[:, None] * f)


def test_in_place_logit_fusion_overwrites_the_scores_with_the_same_values():
    s, f = torch.randn(3, 700) * 3, torch.randn(3, 700).bfloat16()
    lam = torch.tensor([0.5, 1.0, 2.5])
    fusion = RectificationFusion("logits")
    kept = s.clone()
    new = fusion(s, f, lam)
    assert torch.equal(s, kept)  # out of place by default
    fused = fusion(s, f, lam, in_place=True)
    assert fused is s and torch.equal(fused, new)
    assert fusion(s.bfloat16(), f, lam, in_place=True).dtype == torch.float32  # a new tensor


def test_prob_fusion_clamps_renormalises_and_returns_log_probs():
    s = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    f = torch.tensor([[-2.0, 0.5, 0.1, 0.0]])
    out = RectificationFusion("probs")(s, f, torch.tensor([0.5]))
    q = (torch.softmax(s, -1) + 0.5 * f).clamp_min(0)
    q = q / q.sum()
    assert torch.isneginf(out[0, 0])  # p_0 + 0.5 * (-2) < 0: clamped, never sampled
    torch.testing.assert_close(out[0, 1:], q[0, 1:].log())
    torch.testing.assert_close(torch.softmax(out, -1), q)


@pytest.mark.parametrize("space", ["logits", "probs"])
def test_fusion_keeps_what_the_engine_masked_masked(space):
    # A grammar, allowed_token_ids, bad_words or min_tokens set these to -inf before the
    # copilot; a positive rectification there must not make them samplable again.
    scores = torch.tensor([[1.0, -torch.inf, 0.5, -torch.inf]])
    rectification = torch.tensor([[0.0, 0.9, 0.0, 0.4]])
    fused = RectificationFusion(space)(scores, rectification, torch.tensor([1.0]))
    assert torch.isneginf(fused[0, [1, 3]]).all()
    assert torch.isfinite(fused[0, [0, 2]]).all()


def test_prob_fusion_keeps_a_row_whose_mass_vanishes():
    s = torch.randn(1, 5)
    out = RectificationFusion("probs")(s, -torch.ones(1, 5), torch.tensor([10.0]))
    torch.testing.assert_close(out, s)


def test_prob_fusion_from_given_log_probs_equals_from_scores():
    s, f = torch.randn(4, 50) * 3, torch.randn(4, 50) * 0.1
    lam = torch.tensor([0.0, 0.5, 1.0, 2.0])
    fusion = RectificationFusion("probs")
    given = fusion(s, f, lam, torch.log_softmax(s, -1))
    torch.testing.assert_close(given, fusion(s, f, lam))
    q = (torch.softmax(s, -1) + lam[:, None] * f).clamp_min(0)
    torch.testing.assert_close(torch.softmax(given, -1), q / q.sum(-1, keepdim=True))


def test_pilot_features_are_the_top_k_probabilities():
    logits = torch.randn(3, 40)
    probs, ids = torch.softmax(logits, -1).topk(4)
    features = PilotFeatures.from_logits(logits, 4)
    assert torch.equal(features.ids, ids)
    torch.testing.assert_close(features.probs, probs)


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="fusion space"):
        RectificationFusion("hidden")


# -- request parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "nope"}, "correction.copilot.name"),
        ({}, "correction.copilot.name"),
        ({"name": "fix", "lambda": "high"}, "correction.copilot.lambda"),
        ({"name": "fix", "lambda": -1}, "correction.copilot.lambda"),
        ({"name": "fix", "lambda": math.inf}, "correction.copilot.lambda"),
        ({"name": "fix", "space": "hidden"}, "correction.copilot.space"),
        ({"name": "fix", "alpha": 1}, "correction.copilot.alpha"),
        ("fix", "correction.copilot"),
    ],
)
def test_bad_params_name_the_field(params, field):
    with pytest.raises(CorrectionError) as err:
        parse_correction({"copilot": params}, context=CONTEXT)
    assert err.value.param == field


def test_unknown_copilot_message_lists_the_declared_ones():
    with pytest.raises(CorrectionError, match="declared for it: fix, other"):
        parse_correction({"copilot": {"name": "nope"}}, context=CONTEXT)


def test_params_round_trip_through_the_wire_with_lambda_spelled_out():
    spec = parse_correction(
        {"copilot": {"name": "fix", "lambda": 0.5, "space": "probs"}}, context=CONTEXT
    )
    assert json.loads(spec.to_wire()) == {
        "copilot": {"name": "fix", "lambda": 0.5, "space": "probs"}
    }
    assert decode_wire(spec.to_wire(), context=CONTEXT) == spec
    defaults = parse_correction({"copilot": {"name": "fix"}}, context=CONTEXT)
    assert defaults.steps["copilot"].lambda_ is None
    assert defaults.steps["copilot"].space is None


# -- binding and checkpoint -----------------------------------------------------------------------


def test_binding_checks_vocabulary_and_config_but_not_how_it_was_saved():
    vocab = {"a": 0, "b": 1}
    config = {"hidden_size": 8, "_name_or_path": "/x", "transformers_version": "5"}
    binding = Binding.of("pilot", vocab, config)
    same = {**config, "_name_or_path": "/y", "dtype": "bfloat16"}
    binding.check("same", dict(vocab), same, None)
    with pytest.raises(BindingError, match="tokenizer differs"):
        binding.check("other", {"a": 0, "c": 1}, config, None)
    with pytest.raises(BindingError, match="config differs"):
        binding.check("other", vocab, {**config, "hidden_size": 16}, None)


def tiny_copilot_config(vocab):
    return tiny_llama_config(
        vocab,
        hidden_size=64,
        intermediate_size=128,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def random_copilot(vocab, top_k=4, seed=0):
    torch.manual_seed(seed)
    model = Copilot(tiny_copilot_config(vocab), top_k)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # trained heads are not zero
    return model.eval()


def test_checkpoint_round_trip(tmp_path):
    model = random_copilot(50)
    binding = Binding("p", "v" * 64, "c" * 64, "probs", 2.0)
    save(tmp_path / "ck", model, binding)
    checkpoint = read(tmp_path / "ck")
    assert checkpoint.binding == binding and checkpoint.top_k == 4
    loaded = checkpoint.load_model()
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    with pytest.raises(CheckpointError, match="corrigo copilot train"):
        read(tmp_path)


# -- the plugin, stepping a real copilot through the auxiliary runner -----------------------------


def packed_batch(caches, new):
    """A 2-layer packed batch: ``new[row]`` tokens for each row with any, on ``caches[row]``."""
    segments, start = [], 0
    for row, count in enumerate(new):
        cache = caches[row]
        if count:
            cache.reserve(cache.cached + count)
            segments.append(Segment(cache, cache.cached, count, start))
            start += count
    return Packed(segments, 2)


def reference_rectification(copilot, stream, prompt_length, features):
    """The copilot's output for the stream's last position, computed without any cache:
    pilot features at positions >= prompt_length - 1 (``features[j]`` for position
    ``prompt_length - 1 + j``), tokens alone before."""
    n, k = len(stream), copilot.top_k
    ids = torch.zeros(1, n, k, dtype=torch.long)
    probs = torch.zeros(1, n, k)
    for j, feat in enumerate(features):
        ids[0, prompt_length - 1 + j] = feat.ids
        probs[0, prompt_length - 1 + j] = feat.probs
    with torch.no_grad():
        return copilot(torch.tensor([stream]), ids, probs).logits[0, -1]


@pytest.mark.parametrize("vocab", [60, 700])  # 700: the blocked top-k (decoding/topk.py) runs
def test_plugin_matches_an_uncached_reference_through_joins_and_leaves(tmp_path, vocab):
    model = random_copilot(vocab, top_k=5)
    save(tmp_path / "ck", model, Binding("p", "v", "c", "logits", 1.5))
    plugin = CopilotRectification({"fix": CopilotRunner(str(tmp_path / "ck"))})
    requests = {
        0: ({"name": "fix"}, [1, 2, 3, 4]),  # checkpoint defaults: logits, lambda 1.5
        1: ({"name": "fix", "lambda": 0.7, "space": "probs"}, [5, 6]),
        2: ({"name": "fix", "lambda": 3.0, "space": "logits"}, [7]),
    }
    streams = {uid: (list(p), []) for uid, (_, p) in requests.items()}
    history = {uid: [] for uid in requests}
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        live = [uid for uid in requests if not (uid == 0 and step >= 6) and (uid != 2 or step >= 3)]
        if step == 6:
            plugin.release(0)
        rows = [
            Row(
                uid,
                parse_correction({"copilot": requests[uid][0]}, context=CONTEXT),
                TokenStream(streams[uid][0], streams[uid][1]),
            )
            for uid in live
        ]
        logits = torch.randn(len(rows), vocab, generator=generator) * 3
        out = plugin.apply(logits.clone(), rows)
        for i, uid in enumerate(live):
            params = requests[uid][0]
            probs, ids = torch.softmax(logits[i], -1).topk(5)
            feat = PilotFeatures(ids, probs)
            history[uid].append(feat)
            prompt, output = streams[uid]
            f = reference_rectification(model, prompt + output, len(prompt), history[uid])
            lam = torch.tensor([params.get("lambda", 1.5)])
            fusion = RectificationFusion(params.get("space", "logits"))
            expected = fusion(logits[i : i + 1], f[None], lam)[0]
            # Cached and uncached forwards sum in other orders: entries up to ~20 at vocab 700.
            tol = 1e-4 if vocab < 100 else 1e-3
            torch.testing.assert_close(out[i], expected, rtol=tol, atol=tol)
            output.append(int(torch.randint(0, vocab, (1,), generator=generator)))


def test_a_chunked_prompt_is_prefilled_once_and_rectified_with_its_last_steps_pilot(tmp_path):
    """Under chunked prefill a row's prompt reaches the plugin at several steps with the
    same stream and, each time, other pilot logits (the engine discards all but the last
    chunk's token). The copilot prefills it once, then reruns only the last token with that
    step's pilot features: the rectification is the uncached reference's with the features
    of the step at hand."""
    vocab = 50
    model = random_copilot(vocab, top_k=4)
    save(tmp_path / "ck", model, Binding("p", "v", "c", "logits", 1.0))
    source = CopilotRunner(str(tmp_path / "ck"))
    plugin = CopilotRectification({"fix": source})
    tokens = []
    original = source.runner.model.forward

    def counting(*args, **kwargs):
        tokens.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    source.runner.model.forward = counting
    prompt = list(range(1, 31))
    spec = parse_correction({"copilot": {"name": "fix"}}, context=CONTEXT)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        logits = torch.randn(1, vocab, generator=generator) * 3
        out = plugin.apply(logits.clone(), [Row(0, spec, TokenStream(prompt, []))])
        probs, ids = torch.softmax(logits[0], -1).topk(4)
        f = reference_rectification(model, prompt, len(prompt), [PilotFeatures(ids, probs)])
        torch.testing.assert_close(out[0], logits[0] + f, rtol=1e-4, atol=1e-4)
    assert tokens == [30, 1, 1]


def test_plugin_fuses_a_whole_batch_in_one_space(tmp_path):
    """Every row in probs space: the batched path, checked against the formula."""
    vocab = 40
    model = random_copilot(vocab, top_k=4)
    save(tmp_path / "ck", model, Binding("p", "v", "c"))
    plugin = CopilotRectification({"fix": CopilotRunner(str(tmp_path / "ck"))})
    lams = [0.5, 2.0]
    rows = [
        Row(
            uid,
            parse_correction(
                {"copilot": {"name": "fix", "lambda": lam, "space": "probs"}}, context=CONTEXT
            ),
            TokenStream([3 + uid, 4, 5], []),
        )
        for uid, lam in enumerate(lams)
    ]
    logits = torch.randn(2, vocab) * 3
    out = plugin.apply(logits.clone(), rows)
    for i, lam in enumerate(lams):
        probs, ids = torch.softmax(logits[i], -1).topk(4)
        f = reference_rectification(model, [3 + i, 4, 5], 3, [PilotFeatures(ids, probs)])
        q = (torch.softmax(logits[i], -1) + lam * f).clamp_min(0)
        torch.testing.assert_close(torch.softmax(out[i], -1), q / q.sum(), rtol=1e-4, atol=1e-5)


def test_observer_gets_mean_and_max_of_the_applied_rectification(tmp_path):
    model = random_copilot(30, top_k=3)
    save(tmp_path / "ck", model, Binding("p", "v", "c"))
    seen = []
    plugin = CopilotRectification(
        {"fix": CopilotRunner(str(tmp_path / "ck"))},
        observe=lambda rows, mean, top: seen.append(([r.uid for r in rows], mean, top)),
    )
    spec = parse_correction({"copilot": {"name": "fix", "lambda": 2.0}}, context=CONTEXT)
    logits = torch.randn(1, 30)
    out = plugin.apply(logits.clone(), [Row(7, spec, TokenStream([1, 2], []))])
    applied = (out - logits).abs()
    [(uids, mean, top)] = seen
    assert uids == [7]
    torch.testing.assert_close(mean, applied.mean(-1))
    torch.testing.assert_close(top, applied.amax(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layers_compute_what_transformers_layers_compute_bit_for_bit(dtype):
    """The copilot's packed backbone (decoding/copilot/model.py ``packed_layer``) against
    transformers' ``LlamaDecoderLayer`` over the same packed batch: two rows prefilled, then
    decode steps with a third row joining; the same values exactly, at every step."""
    torch.manual_seed(0)
    model = Copilot(tiny_copilot_config(90), top_k=3).to(dtype).eval()
    model.config._attn_implementation = ATTENTION
    backbone = model.backbone
    shape = (2, backbone.config.num_key_value_heads, backbone.config.head_dim)
    caches = {
        name: [RowCache(shape, dtype, torch.device("cpu")) for _ in range(3)] for name in "ab"
    }

    def transformers_layers(embeds, positions, batch):
        rotary = backbone.rotary_emb(embeds, position_ids=positions)
        hidden = embeds
        for layer in backbone.layers:
            hidden = layer(
                hidden, position_ids=positions, position_embeddings=rotary, corrigo_batch=batch
            )
        return backbone.norm(hidden)

    steps = [[5, 3, 0], [1, 1, 0], [1, 1, 4], [1, 1, 1], [0, 1, 1]]
    with torch.inference_mode():
        for new in steps:
            batch = {name: packed_batch(caches[name], new) for name in "ab"}
            tokens = batch["a"].tokens
            embeds = torch.randn(1, tokens, 64).to(dtype)
            positions = torch.tensor(
                [[s.past + i for s in batch["a"].segments for i in range(s.new)]]
            )
            ours = model._packed_backbone(embeds, position_ids=positions, corrigo_batch=batch["a"])
            theirs = transformers_layers(embeds, positions, batch["b"])
            assert batch["a"].seen == batch["b"].seen == 2
            assert torch.equal(ours, theirs)
            for name in "ab":
                for segment in batch[name].segments:
                    segment.cache.cached += segment.new
            for mine, other in zip(caches["a"], caches["b"], strict=True):
                assert torch.equal(mine.store, other.store)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_projections_compute_the_separate_ones(dtype):
    """The packed backbone with each layer's projections concatenated
    (``Copilot.fuse_projections``, what the runner uses, packed for oneDNN where the runner
    packs) against the separate projections, over prefills, decode steps and a joining row:
    each output column is the same dot product, so the values agree to the kernels' rounding
    (float32: 1e-5; bf16: a couple of bf16 steps, 2^-7 relative; identical on this project's
    bf16 machine)."""
    torch.manual_seed(0)
    model = Copilot(tiny_copilot_config(90), top_k=3).eval()
    model.fuse_projections()
    model = model.to(dtype)
    if packs("cpu", dtype_name(dtype)):
        pack_linears(model)
    model.config._attn_implementation = ATTENTION
    fused = model.fused
    config = model.backbone.config
    shape = (2, config.num_key_value_heads, config.head_dim)
    caches = {
        name: [RowCache(shape, dtype, torch.device("cpu")) for _ in range(3)]
        for name in ("fused", "separate")
    }
    tolerance = 1e-5 if dtype == torch.float32 else 2**-6
    with torch.inference_mode():
        for new in [[5, 3, 0], [1, 1, 0], [1, 1, 4], [1, 1, 1], [0, 1, 1]]:
            outs = {}
            for name, projections in (("fused", fused), ("separate", None)):
                batch = packed_batch(caches[name], new)
                segments = batch.segments
                torch.manual_seed(sum(new))  # the same inputs for both
                embeds = torch.randn(1, batch.tokens, 64).to(dtype)
                positions = torch.tensor([[s.past + i for s in segments for i in range(s.new)]])
                model.fused = projections
                outs[name] = model._packed_backbone(
                    embeds, position_ids=positions, corrigo_batch=batch
                )
                for segment in segments:
                    segment.cache.cached += segment.new
            model.fused = fused
            torch.testing.assert_close(
                outs["fused"].float(), outs["separate"].float(), rtol=tolerance, atol=tolerance
            )
            for one, other in zip(caches["fused"], caches["separate"], strict=True):
                torch.testing.assert_close(
                    one.store.float(), other.store.float(), rtol=tolerance, atol=tolerance
                )


def test_float32_layers_attend_in_their_caches_dtype():
    """A copilot's float32 layers over bf16 caches (decoding/copilot/runner.py): the ragged
    attention writes the keys and values rounded to bf16 and attends in bf16, exactly as a bf16
    model does with the same (rounded) inputs, and hands the result back in float32."""
    torch.manual_seed(3)
    dtype, layer = torch.bfloat16, type("Layer", (), {"layer_idx": 0})()
    outs = {}
    for name, computes in (("mixed", torch.float32), ("bf16", dtype)):
        caches = [RowCache((1, 1, 32), dtype, torch.device("cpu")) for _ in range(2)]
        for cache in caches:
            cache.reserve(8)
        torch.manual_seed(3)
        query, key, value = (torch.randn(1, h, 5, 32).to(dtype) for h in (2, 1, 1))
        batch = Packed([Segment(caches[0], 0, 3, 0), Segment(caches[1], 0, 2, 3)], 1)
        out, _ = ragged_attention(
            layer, *(t.to(computes) for t in (query, key, value)), None, corrigo_batch=batch
        )
        assert out.dtype == computes
        outs[name] = out, [c.store.clone() for c in caches]
    assert torch.equal(outs["mixed"][0], outs["bf16"][0].float())
    for mixed, bf16 in zip(outs["mixed"][1], outs["bf16"][1], strict=True):
        assert torch.equal(mixed, bf16)


def test_rotary_table_rows_are_what_the_rotary_embedding_computes():
    """The packed backbone's RoPE table (``Copilot._rotary``): for positions anywhere, in
    any order, through the table's growth, the values ``backbone.rotary_emb`` computes for
    those positions, bit for bit."""
    model = Copilot(tiny_copilot_config(90), top_k=3).eval()
    rotary = model.backbone.rotary_emb
    embeds = torch.zeros(1, 5, 64)
    with torch.inference_mode():
        for positions in ([0, 1, 2, 3, 4], [200, 7, 255, 3, 100], [1000, 4095, 17, 0, 2048]):
            ids = torch.tensor([positions])
            ours, theirs = model._rotary(embeds, ids), rotary(embeds, position_ids=ids)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        assert model._rotary_table[0].shape[0] == 2 * 4096  # grew once for position 4095


# -- the trainer ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    return make_tiny_llama(
        tmp_path_factory.mktemp("copilot") / "pilot", ensure_default_model(), initializer_range=0.2
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("copilot-data") / "data.jsonl"
    with path.open("w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"Add {i} and {i}.", "response": f"It is {2 * i}."}))
            f.write("\n")
    return path


SETTINGS = TrainSettings(top_k=8, hidden_size=64, layers=1, lr=3e-3, epochs=100, batch_size=4)


def test_training_lowers_the_rmse_and_resumes(pilot, data, tmp_path):
    out = tmp_path / "run"
    first = list(
        train(str(pilot), data, out, SETTINGS.__class__(**{**SETTINGS.__dict__, "max_steps": 20}))
    )
    assert [s for s, _ in first] == list(range(1, 21))
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").open()]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3])
    resumed = list(
        train(str(pilot), data, out, SETTINGS.__class__(**{**SETTINGS.__dict__, "max_steps": 25}))
    )
    assert [s for s, _ in resumed] == list(range(21, 26))  # resumed, not restarted
    checkpoint = read(out)
    vocab = AutoTokenizer.from_pretrained(pilot).get_vocab()
    config = AutoConfig.from_pretrained(pilot).to_dict()
    checkpoint.binding.check(str(pilot), vocab, config, weights_fingerprint(pilot))
    check_binding("fix", str(out), str(pilot))


def test_mistake_log_holds_the_pilots_top_k_over_each_response_token(pilot, data, tmp_path):
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "max_steps": 1})
    list(train(str(pilot), data, tmp_path / "run", settings))
    log = MistakeLog.load(tmp_path / "run" / "mistake_log" / "part-00000.npz")
    assert len(log) == 12
    tokenizer = AutoTokenizer.from_pretrained(pilot)
    prompt, response = read_pairs(data)[3]
    stream, prompt_length = encode(tokenizer, prompt, response, 512)
    assert log.tokens[log.offsets[3] : log.offsets[4]].tolist() == stream
    assert stream[-1] == tokenizer.eos_token_id
    assert log.rows[4] - log.rows[3] == len(stream) - prompt_length
    model = AutoModelForCausalLM.from_pretrained(pilot, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([stream])).logits[0, prompt_length - 1 : -1]
    probs, ids = torch.softmax(logits, -1).topk(8, -1)
    logged = slice(log.rows[3], log.rows[4])
    assert (torch.from_numpy(log.top_ids[logged]).long() == ids).all()
    torch.testing.assert_close(
        torch.from_numpy(log.top_probs[logged]).float(), probs, atol=1e-3, rtol=1e-2
    )
    assert log.top_ids.dtype == np.int32 and log.top_probs.dtype == np.float16
    assert 0 <= tail_bound(log) < 1


def test_a_copilot_for_another_pilot_is_refused(pilot, data, tmp_path):
    other = make_tiny_llama(tmp_path / "other", ensure_default_model(), initializer_range=0.1)
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "max_steps": 1})
    list(train(str(pilot), data, tmp_path / "run", settings))
    with pytest.raises(CopilotConfigError, match="copilots.fix .* cannot serve .*config differs"):
        check_binding("fix", str(tmp_path / "run"), str(other))


def test_bad_data_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(TrainingError, match="bad.jsonl:2"):
        read_pairs(path)


def test_a_bf16_copilot_rectifies_as_its_float32_self(tmp_path):
    """bf16 inference is sound for a copilot trained in float32: its rectification stays
    within 2% of the float32 one's largest entry (bf16 keeps ~3 significant digits), and the
    fused distribution picks the same tokens wherever float32's choice is not a near-tie."""
    vocab, rows = 300, 4
    save(tmp_path / "ck", random_copilot(vocab, top_k=4), Binding("p", "v", "c"))
    runners = {
        dtype: CopilotRunner(str(tmp_path / "ck"), dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    generator = torch.Generator().manual_seed(0)
    streams = {uid: [1 + uid, 7, 9 + uid] for uid in range(rows)}
    fusion, lam = RectificationFusion("probs"), torch.ones(rows)
    for _ in range(10):
        logits = torch.randn(rows, vocab, generator=generator) * 3
        features = PilotFeatures.from_logits(logits, 4)
        inputs = {"pilot_ids": features.ids, "pilot_probs": features.probs}
        current = {uid: TokenStream(s[:2], s[2:]) for uid, s in streams.items()}
        f32, bf16 = (runners[d].step(current, inputs).float() for d in runners)
        assert ((bf16 - f32).abs().amax(-1) <= 0.02 * f32.abs().amax(-1)).all()
        exact, rounded = fusion(logits, f32, lam).softmax(-1), fusion(logits, bf16, lam).softmax(-1)
        top = exact.topk(2).values
        clear = top[:, 0] - top[:, 1] > 2 * (rounded - exact).abs().amax(-1)
        assert clear.any()
        assert torch.equal(exact.argmax(-1)[clear], rounded.argmax(-1)[clear])
        for i, uid in enumerate(streams):
            streams[uid].append(int(exact[i].argmax()))
