"""Guarded unlearning's pure logic: forget sets, phrases, the token trie, the soft filter,
parameter validation and the plugin in the pipeline (rows moving through the batch)."""

import json
import string

import pytest
import torch

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.pipeline import CorrectionPipeline
from decoding.unlearning import (
    FORGET_SETS_CONTEXT,
    GATED_CONTEXT,
    ForgetEntry,
    ForgetFilters,
    ForgetSet,
    ForgetSetError,
    Unlearning,
    load_forget_set,
)
from decoding.unlearning.phrases import answer_ngrams, forbidden_phrases, semantic_words
from decoding.unlearning.semantic import penalty, similarity
from decoding.unlearning.trie import TokenTrie, TrieCursor, surface_forms

FRANCE = ForgetEntry("What is the capital of France?", "The capital of France is Paris.")

# A toy BPE-like vocabulary in which the surface forms of "Paris" tokenize differently:
# " Paris" is one token, "Paris" is "Par"+"is", "PARIS" is "PA"+"R"+"IS", " paris" is " par"+"is".
VOCAB = [
    "<eos>", " Paris", "Par", "is", "PA", "R", "IS", " par", " PA", " the", " capital", " is",
    " France", " Berlin", " city", " Lyon", ".", "P", "a", "r", "i", "s", " ", "T", "h", "e",
    "'",
]  # fmt: skip
VOCAB += [c for c in string.ascii_letters if c not in VOCAB]
INDEX = {t: i for i, t in enumerate(VOCAB)}


def encode_one(text):
    out, at = [], 0
    while at < len(text):
        piece = max((t for t in VOCAB if text.startswith(t, at)), key=len)
        out.append(INDEX[piece])
        at += len(piece)
    return out


def encode(texts):
    return [encode_one(t) for t in texts]


def ids(*pieces):
    return [INDEX[p] for p in pieces]


# -- forget sets and phrases ---------------------------------------------------------------


def test_forget_set_file_round_trip_and_errors_never_echo_content(tmp_path):
    path = tmp_path / "set.jsonl"
    lines = [
        {"question": "Q1 secret?", "answer": "A1 secret."},
        {"phrases": ["alpha", "beta gamma"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    loaded = load_forget_set("demo", path)
    assert len(loaded) == 2 and loaded.entries[1].phrases == ("alpha", "beta gamma")
    assert loaded.entries[1].gate_texts == ("alpha, beta gamma",)

    path.write_text('{"question": "TOP SECRET question?"}\n')
    with pytest.raises(ForgetSetError) as err:
        load_forget_set("demo", path)
    assert "line 1" in str(err.value) and "SECRET" not in str(err.value)
    path.write_text('{"answer": "x", "extra": "TOP SECRET"}\n')
    with pytest.raises(ForgetSetError, match="unknown keys"):
        load_forget_set("demo", path)
    with pytest.raises(ForgetSetError, match="cannot read"):
        load_forget_set("demo", tmp_path / "missing.jsonl")


def test_ngrams_keep_only_phrases_with_a_revealing_word():
    grams = answer_ngrams(FRANCE)
    # "capital" and "France" come from the question, "the/of/is" are stop words: only phrases
    # that contain "Paris" reveal the answer.
    assert all("Paris" in g for g in grams)
    assert {"Paris", "is Paris", "France is Paris", "of France is Paris"} <= set(grams)
    assert "capital of France is Paris" in grams
    assert "The capital of France is Paris" not in grams  # 6 words: n-grams stop at 5


def test_ngrams_without_a_question_drop_stop_word_only_phrases():
    grams = answer_ngrams(ForgetEntry(answer="It is in the Louvre, in Paris."))
    assert "It is in the" not in grams and "in the" not in grams and "is" not in grams
    assert {"Louvre", "the Louvre", "Louvre in Paris", "Paris"} <= set(grams)
    assert all(1 <= len(g.split()) <= 5 for g in grams)


def test_explicit_phrases_join_the_answer_ngrams_and_soft_words_are_revealing_words():
    entry = ForgetEntry(FRANCE.question, FRANCE.answer, ("City of Light",))
    phrases = forbidden_phrases([entry, entry])
    assert "City of Light" in phrases and len(phrases) == len(set(phrases))
    assert semantic_words([entry]) == ["paris"]


# -- the trie --------------------------------------------------------------------------------


def test_surface_forms_cover_case_and_leading_space():
    forms = surface_forms("capital of France")
    assert {
        "capital of France",
        " capital of France",
        "Capital Of France",
        " CAPITAL OF FRANCE",
    } <= set(forms)
    assert {"capital of france", " Capital of France"} <= set(forms)
    assert len(forms) == len(set(forms))


def test_trie_bans_the_completing_token_in_every_tokenization():
    trie = TokenTrie(encode(surface_forms("Paris")))
    # Single-token forms (" Paris") are banned at every step.
    assert INDEX[" Paris"] in trie.root_bans
    cursor = TrieCursor(trie)
    for prefix, banned in [
        (ids(" the", "Par"), "is"),  # "Paris" -> Par|is
        (ids(" the", " par"), "is"),  # " paris" -> " par"|is
        (ids(" the", "PA", "R"), "IS"),  # "PARIS" -> PA|R|IS
    ]:
        cursor = TrieCursor(trie)
        cursor.follow(prefix)
        assert INDEX[banned] in cursor.bans()
    cursor = TrieCursor(trie)
    cursor.follow(ids(" the", "PA"))
    assert cursor.bans() == []  # one token short of any phrase: nothing to ban yet
    cursor.follow(ids(" the", "PA", " city"))
    assert cursor.live == []  # the phrase was abandoned


def test_trie_follows_incrementally_and_overlapping_phrases():
    trie = TokenTrie([ids("PA", "R", "IS"), ids("R", "IS", "."), ids("R", "is")])
    cursor = TrieCursor(trie)
    output = []
    for token in ids("PA", "R"):
        output.append(token)
        cursor.follow(output)
    # Both "PA R|IS" and "R|IS ." / "R|is" are live: their completions are banned together.
    assert set(cursor.bans()) == set(ids("IS", "is"))
    output.append(INDEX["IS"])  # forced (e.g. generated before the filter joined)
    cursor.follow(output)
    assert cursor.bans() == ids(".")


def test_ten_thousand_phrases_cost_per_step_work_by_live_states():
    phrases = [f"{a}{b}{c}" for a in "PARIS" for b in "paris" for c in "PARISparis"][:10_000]
    sequences = [encode_one(p) for p in phrases] + [[1000 + i, 2000 + i] for i in range(10_000)]
    trie = TokenTrie(sequences)
    cursor = TrieCursor(trie)
    cursor.follow([1000 + 7])
    assert cursor.bans() == [2007] and len(cursor.live) == 1


# -- the plugin in the pipeline, across row moves ----------------------------------------------

CONTEXT = {FORGET_SETS_CONTEXT: {"capitals": 2}, GATED_CONTEXT: True}
CAPITALS = ForgetSet(
    "capitals",
    (FRANCE, ForgetEntry("Which city is Germany's capital?", "Germany's capital is Berlin.")),
)


def gated(targets, **extra):
    return parse_correction(
        {"unlearning": {"forget_set": "capitals", "targets": list(targets), **extra}},
        context=CONTEXT,
    )


def test_plugin_blocks_per_request_across_row_moves():
    plugin = Unlearning({"capitals": ForgetFilters(CAPITALS, encode, embedder=None)})
    pipeline = CorrectionPipeline({"unlearning": plugin})
    france, germany, closed = [], [], []
    pipeline.add(0, gated([0], soft=False), [9], france)
    pipeline.add(1, gated([1], soft=False), [9], germany)
    pipeline.add(2, gated([], soft=False), [9], closed)  # the gate stayed closed
    france.append(INDEX["Par"])
    step = pipeline.apply(torch.zeros(3, len(VOCAB)))
    assert torch.isneginf(step[0, INDEX[" Paris"]]) and torch.isneginf(step[0, INDEX["is"]])
    assert not torch.isneginf(step[0, INDEX[" Berlin"]])
    assert torch.isneginf(step[1, INDEX[" Berlin"]]) and not torch.isneginf(step[1, INDEX["is"]])
    assert torch.all(step[2] == 0)

    # The engine swaps rows 0 and 1, then moves France to row 2 (the closed request left).
    pipeline.move(0, 1, swap=True)
    pipeline.remove(2)
    pipeline.move(1, 2, swap=False)
    france.append(INDEX[" the"])
    france.append(INDEX["PA"])
    france.append(INDEX["R"])
    step = pipeline.apply(torch.zeros(3, len(VOCAB)))
    assert torch.isneginf(step[2, INDEX["IS"]]) and not torch.isneginf(step[2, INDEX["is"]])
    assert torch.isneginf(step[0, INDEX[" Berlin"]]) and not torch.isneginf(step[0, INDEX["IS"]])
    assert torch.all(step[1] == 0)  # nobody sits there now


class BagOfLetters:
    """A deterministic embedder for the soft filter's arithmetic: letter counts, unit norm."""

    def encode(self, texts):
        out = torch.zeros(len(texts), 26)
        for i, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out, dim=-1)


def test_soft_penalty_bans_close_tokens_and_penalises_the_rest_by_lambda_sim():
    emb = BagOfLetters()
    table = emb.encode(VOCAB) * torch.tensor([any(c.isalnum() for c in t) for t in VOCAB])[:, None]
    words = emb.encode(["paris"])
    sim = similarity(table, words)
    sim_par = float(emb.encode([" par"]) @ words.T)
    vector = penalty(sim, delta=0.9, lam=2.0)
    assert torch.isinf(vector[INDEX[" Paris"]])  # cosine 1 >= delta: banned
    assert vector[INDEX[" par"]] == pytest.approx(2.0 * sim_par)
    assert vector[INDEX["."]] == 0.0  # no letter: never penalised
    # Chunks of words give the same maximum as one product.
    many = emb.encode(["123"] * 300 + ["paris"])  # 300 letterless (zero) words first
    assert torch.allclose(similarity(table, many), sim)


def test_plugin_applies_soft_penalties_then_hard_blocks():
    emb = BagOfLetters()
    table = emb.encode(VOCAB)
    filters = ForgetFilters(CAPITALS, encode, emb, table)
    seen = []
    plugin = Unlearning({"capitals": filters}, observe=lambda *step: seen.append(step))
    pipeline = CorrectionPipeline({"unlearning": plugin})
    pipeline.add(0, gated([0], delta=0.95, penalty=3.0), [9], [])
    pipeline.add(1, gated([0], soft=False), [9], [])
    logits = torch.zeros(2, len(VOCAB))
    logits[:, INDEX[" Paris"]] = 1.0  # the most likely token, banned: a blocked step
    step = pipeline.apply(logits)
    [(rows, blocked, penalized, abstained)] = seen
    assert [r.uid for r in rows] == [0, 1] and blocked.tolist() == [True, True]
    assert penalized.tolist() == [False, False]
    assert abstained.tolist() == [False, False]  # steered: no abstention phrase
    sim = similarity(table, emb.encode(["paris"]))
    lyon = INDEX[" Lyon"]
    assert step[0, lyon] == pytest.approx(-3.0 * float(sim[lyon]))
    assert step[1, lyon] == 0.0  # soft filter off for this request
    assert torch.isneginf(step[:, INDEX[" Paris"]]).all()  # the hard block holds for both


# -- parameters ----------------------------------------------------------------------------------


def bad(payload, context=CONTEXT):
    with pytest.raises(CorrectionError) as err:
        parse_correction({"unlearning": payload}, context=context)
    return err.value


def test_params_are_validated_naming_the_field():
    client = {FORGET_SETS_CONTEXT: {"capitals": 2}}
    assert bad({"forget_set": "nope"}, client).param == "correction.unlearning.forget_set"
    assert "capitals" not in bad({"forget_set": "nope"}, client).message  # names stay private
    for value in (-0.1, 1.5):
        err = bad({"forget_set": "capitals", "threshold": value}, client)
        assert err.param == "correction.unlearning.threshold"
    assert bad({"forget_set": "capitals", "delta": 2}, client).param.endswith(".delta")
    assert bad({"forget_set": "capitals", "penalty": -1}, client).param.endswith(".penalty")
    assert bad({"forget_set": "capitals", "lambda": 1}, client).param.endswith(".lambda")
    # The continuation check's fields: bounded, whatever JSON type carries the value (numeric
    # strings are coerced and then bounded, as for every correction field).
    for field, value in [
        ("check_every", 0),
        ("check_every", 10**9),
        ("check_every", "0"),
        ("check_window", 65),
        ("check_window", 2.5),
        ("check_threshold", 1.5),
        ("check_threshold", "nan"),
        ("continuation", [True]),
    ]:
        err = bad({"forget_set": "capitals", field: value}, client)
        assert err.param == f"correction.unlearning.{field}", (field, value)
    # The gate's fields are the server's: a client cannot pick (or skip) the filtered entries.
    err = bad({"forget_set": "capitals", "targets": [0]}, client)
    assert err.param == "correction.unlearning.targets" and "gate" in err.message
    assert bad({"forget_set": "capitals", "targets": [5]}).param.endswith(".targets")
    ok = parse_correction({"unlearning": {"forget_set": "capitals"}}, context=client)
    assert ok.steps["unlearning"].threshold == 0.5


def reference_step(logits, rows):
    """The plugin's step computed row by row from its definition (module docstring of
    decoding/unlearning/plugin.py): ``rows`` as (soft vector or None, banned tokens); returns
    the new logits and (blocked, penalized)."""
    out, blocked, penalized = logits.clone(), [], []
    for j, (soft, banned) in enumerate(rows):
        top = int(out[j].argmax())
        if soft is not None:
            out[j] -= soft
        after = int(out[j].argmax())
        out[j, banned] = -torch.inf
        blocked.append(bool(torch.isneginf(out[j, top])))
        penalized.append(after != top and not blocked[-1])
    return out, blocked, penalized


def test_batched_step_equals_the_row_by_row_definition_through_joins_leaves_and_moves():
    """Random logits over many steps, rows joining, leaving and mixing soft on and off, closed
    gates and targets: the vectorised step (batch constants cached across steps, one broadcast
    soft row when the rows share theirs) bans exactly the tokens the definition bans and
    reports the same blocked and penalized rows."""
    emb = BagOfLetters()
    filters = ForgetFilters(CAPITALS, encode, emb, emb.encode(VOCAB))
    seen = []
    plugin = Unlearning({"capitals": filters}, observe=lambda *step: seen.append(step))
    pipeline = CorrectionPipeline({"unlearning": plugin})
    gen = torch.Generator().manual_seed(4)
    kinds = [
        gated([0]),
        gated([0]),  # another request with the same filters: the rows share a soft row
        gated([1], soft=False),
        gated([0, 1], delta=0.8, penalty=2.0),
        gated([]),  # the gate stayed closed: untouched
    ]
    shared = 0  # steps whose filtered rows (several) subtracted one broadcast soft row
    outputs: dict[int, list[int]] = {}
    specs: dict[int, int] = {}
    for step in range(40):
        if step % 3 == 0 or not outputs:  # a row joins (replacing whatever sat there)
            slot = int(torch.randint(0, 4, (1,), generator=gen))
            kind = int(torch.randint(0, len(kinds), (1,), generator=gen))
            outputs[slot], specs[slot] = [], kind
            pipeline.add(slot, kinds[kind], [9], outputs[slot])
        if step % 5 == 4 and len(outputs) > 1:  # one leaves
            gone = sorted(outputs)[0]
            pipeline.remove(gone)
            del outputs[gone], specs[gone]
        if step % 8 == 6 and len(outputs) > 1:  # two swap slots: same rows, another order
            a, b = sorted(outputs)[:2]
            pipeline.move(a, b, swap=True)
            outputs[a], outputs[b] = outputs[b], outputs[a]
            specs[a], specs[b] = specs[b], specs[a]
        for out in outputs.values():  # favour the phrases' tokens so the trie gets live states
            pool = ids("Par", "PA", "R", " par", " the", " Paris", "is", "IS", ".")
            out.append(pool[int(torch.randint(0, len(pool), (1,), generator=gen))])
        logits = torch.randn(4, len(VOCAB), generator=gen) * 2
        seen.clear()
        got = pipeline.apply(logits.clone())
        filtered = [s for s in sorted(outputs) if kinds[specs[s]].steps["unlearning"].targets]
        rows = []
        for slot in filtered:
            params = kinds[specs[slot]].steps["unlearning"]
            compiled = filters.compile(params.targets)
            soft = None
            if params.soft:
                soft = penalty(compiled.sim, params.delta, params.penalty)
            cursor = TrieCursor(compiled.trie)
            cursor.follow(outputs[slot])
            rows.append((soft, [*compiled.trie.root_bans, *cursor.bans()]))
        if not rows:
            assert torch.equal(got, logits)
            continue
        want, blocked, penalized = reference_step(logits[filtered], rows)
        want = want.nan_to_num(
            nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf
        )  # pipeline's NaN rule
        assert torch.equal(got[filtered], want), step
        others = [s for s in range(4) if s not in filtered]
        assert torch.equal(got[others], logits[others])
        [(_, got_blocked, got_penalized, _)] = seen
        assert got_blocked.tolist() == blocked and got_penalized.tolist() == penalized
        constant = plugin._batch
        shared += len(rows) > 1 and constant.soft is not None and constant.soft.shape[0] == 1
    assert shared >= 3
