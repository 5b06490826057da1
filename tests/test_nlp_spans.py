"""Span-level NLP kinds: tagging, span QA, relation, span NER; their metrics and readers (tiny BERT)."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: E402

from mtlkit.errors import ConfigError, DataError  # noqa: E402
from mtlkit.metrics import METRICS  # noqa: E402
from mtlkit.nlp.base import NLP_KINDS  # noqa: E402
from mtlkit.nlp.kinds.relation import RelationTask, mark_pair  # noqa: E402
from mtlkit.nlp.kinds.span_ner import SpanNERTask  # noqa: E402
from mtlkit.nlp.kinds.span_qa import SpanQATask, decode_spans  # noqa: E402
from mtlkit.nlp.kinds.tagging import TaggingTask  # noqa: E402
from mtlkit.nlp.readers.conll import read_conll, tag_set  # noqa: E402
from mtlkit.nlp.readers.scierc import entity_types, read_scierc, relation_types  # noqa: E402
from mtlkit.nlp.readers.squad import read_squad, split_paragraphs  # noqa: E402
from mtlkit.nlp.records import Answer, Entity, IESentence, QAExample, Relation, TaggedSentence  # noqa: E402
from mtlkit.nlp.span_metrics import entity_scores, normalize_answer, squad_exact_match, squad_f1  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402

NLP = SHARED_DATA / "nlp"
VOCAB = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a an of in is was who what where built empire state building new york "
         "city tower paris ada wrote it bert improves ner un ##believ ##able ##s . , @ # * ^ method task").split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(path))


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB) + 8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return BertModel(config, add_pooling_layer=False).eval()


def run_head(bert, head, batch_inputs):
    """What the NLP model does: encode, trim padding to the batch's longest row, call the head."""
    length = int(batch_inputs["attention_mask"].sum(1).max())
    keys = ("input_ids", "attention_mask", "token_type_ids")
    trimmed = {k: v[:, :length] if k in keys else v for k, v in batch_inputs.items()}
    sequence = bert(**{k: trimmed[k] for k in keys if k in trimmed}).last_hidden_state
    return head(sequence, sequence[:, 0], trimmed)


# -- tagging -------------------------------------------------------------------------------
TAGS = ["O", "B-loc", "I-loc", "B-per", "I-per"]


def test_word_split_into_three_pieces_gets_one_label(tokenizer):
    task = TaggingTask(name="ner", labels=TAGS, max_length=16)
    sentence = TaggedSentence(("unbelievable", "\u200b", "paris"), ("B-per", "O", "B-loc"))
    table = task.featurize([sentence], tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(table.inputs["input_ids"][0].tolist())
    assert pieces[:6] == ["[CLS]", "un", "##believ", "##able", "paris", "[SEP]"]
    assert table.targets["ner"][0, :6].tolist() == [-100, 3, -100, -100, 1, -100]
    assert table.extras["word_index"][0, :6].tolist() == [-1, 0, -1, -1, 2, -1]  # the empty word has no token
    logits = torch.full((1, 6, len(TAGS)), -5.0)
    logits[0, 1, 3] = logits[0, 4, 1] = 5.0
    assert task.predict_tags(logits, table) == [["B-per", "O", "B-loc"]]
    assert task.evaluate([logits], table, [sentence])["entity_f1"] == 1.0


def test_unknown_tag_names_the_source(tokenizer):
    task = TaggingTask(name="ner", labels=TAGS)
    with pytest.raises(DataError, match=r"a\.conll:7.*'B-org'"):
        task.featurize([TaggedSentence(("paris",), ("B-org",), "a.conll:7")], tokenizer)
    with pytest.raises(ValueError, match="not BIO"):
        TaggingTask(name="ner", labels=["O", "PER"])


def test_entity_scores_agree_with_seqeval():
    import seqeval.metrics as seqeval
    rng = random.Random(0)
    tags = ["O", "B-loc", "I-loc", "B-per", "I-per", "B-creative-work", "I-creative-work"]
    for _ in range(200):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 4))]
        gold = [[rng.choice(tags) for _ in range(n)] for n in lengths]  # includes I- after O / another type
        pred = [[rng.choice(tags) for _ in range(n)] for n in lengths]
        ours = entity_scores(gold, pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = (seqeval.precision_score(gold, pred), seqeval.recall_score(gold, pred), seqeval.f1_score(gold, pred))
        assert ours == pytest.approx(theirs, abs=1e-12)


# -- span QA -------------------------------------------------------------------------------
def brute_force(start, end, allowed, max_len):
    best, at = -float("inf"), (0, 0)
    for i in range(len(start)):
        for j in range(i, min(len(start), i + max_len)):
            if allowed[i] and allowed[j] and start[i] + end[j] > best:
                best, at = start[i] + end[j], (i, j)
    return best, at


def test_decoding_never_returns_end_before_start_and_respects_max_length():
    gen = torch.Generator().manual_seed(0)
    start, end = torch.randn(64, 20, generator=gen), torch.randn(64, 20, generator=gen)
    end[:8, :5] += 50.0  # the best ends lie before the best starts
    start[:8, 10:] += 50.0
    allowed = torch.rand(64, 20, generator=gen) > 0.3
    for max_len in (1, 3, 30):
        s, e, score = decode_spans(start, end, allowed, max_len)
        assert (e >= s).all() and (e - s < max_len).all()
        for n in range(64):
            best, at = brute_force(start[n].tolist(), end[n].tolist(), allowed[n].tolist(), max_len)
            assert score[n].item() == pytest.approx(best, abs=1e-5)
            if best > -float("inf"):
                assert allowed[n, s[n]] and allowed[n, e[n]] and (s[n].item(), e[n].item()) == at
    _, _, score = decode_spans(start[:1], end[:1], torch.zeros(1, 20, dtype=torch.bool), 5)
    assert score.item() == -float("inf")


def long_example() -> QAExample:
    context = " ".join(["the city of paris was built ."] * 5 + ["ada wrote the empire state building ."])
    answer = "empire state building"
    return QAExample("q1", "who wrote it", context, (Answer(answer, context.index(answer)),))


def test_windows_with_stride_cover_the_answer_and_map_back_to_characters(tokenizer):
    task = SpanQATask(name="qa", max_length=24, doc_stride=6, max_question_length=8, answer_classifier=True)
    example = long_example()
    table = task.featurize([example], tokenizer)
    n = len(table)
    assert n > 2 and table.extras["example_index"].tolist() == [0] * n
    offsets, target = table.extras["offsets"], table.targets["qa"]
    # Consecutive windows share doc_stride context tokens.
    first_context = [int((offsets[w, :, 0] >= 0).nonzero()[0]) for w in range(n)]
    for w in range(n - 1):
        ends = offsets[w, offsets[w, :, 0] >= 0, 0].tolist()
        starts = offsets[w + 1, offsets[w + 1, :, 0] >= 0, 0].tolist()
        assert ends[-task.doc_stride:] == starts[: task.doc_stride]
    holding = [w for w in range(n) if target[w, 2] == 1]
    assert holding, "some window must hold the answer"
    for w in range(n):
        s, e, flag = target[w].tolist()
        if flag:
            assert example.context[offsets[w, s, 0]: offsets[w, e, 1]] == example.answers[0].text
            assert s >= first_context[w]
        else:
            assert (s, e) == (0, 0)  # unanswerable windows point at [CLS]
    # Oracle logits decode to the gold answer.
    logits = torch.full((n, 24, 3), -5.0)
    for w in holding:
        logits[w, target[w, 0], 0] = logits[w, target[w, 1], 1] = 5.0
    assert task.predict_answers(logits, table, [example]) == {"q1": example.answers[0].text}
    metrics = task.evaluate(logits, table, [example])
    assert metrics["squad_em"] == metrics["squad_f1"] == 1.0


def test_answer_threshold_skips_windows_the_classifier_rejects(tokenizer):
    example = long_example()
    filtered = SpanQATask(name="qa", max_length=24, doc_stride=6, max_question_length=8,
                          answer_classifier=True, answer_threshold=0.5)
    table = filtered.featurize([example], tokenizer)
    target = table.targets["qa"]
    right, wrong = int(target[:, 2].nonzero()[0]), 0
    logits = torch.full((len(table), 24, 3), -5.0)
    logits[right, target[right, 0], 0] = logits[right, target[right, 1], 1] = 2.0
    ctx = int((table.extras["offsets"][wrong, :, 0] >= 0).nonzero()[0])
    logits[wrong, ctx, 0] = logits[wrong, ctx, 1] = 9.0  # a confident span in a window without the answer
    logits[:, 0, 2] = -4.0
    logits[right, 0, 2] = 4.0  # the classifier says only `right` holds the answer
    unfiltered = filtered.model_copy(update={"answer_threshold": None})
    assert unfiltered.predict_answers(logits, table, [example])["q1"] != example.answers[0].text
    assert filtered.predict_answers(logits, table, [example])["q1"] == example.answers[0].text
    assert filtered.evaluate(logits, table, [example])["answer_window_accuracy"] == 1.0
    logits[:, 0, 2] = -4.0  # every window rejected: the most likely one is still read
    assert filtered.predict_answers(logits, table, [example])["q1"] != ""
    with pytest.raises(ValueError, match="answer_classifier"):
        SpanQATask(name="qa", answer_threshold=0.5)


def test_misplaced_answer_is_a_data_error(tokenizer):
    bad = QAExample("q9", "who", "ada wrote it", (Answer("ada", 4),), source="x.json: data[0].paragraphs[0].qas[0]")
    with pytest.raises(DataError, match=r"x\.json: data\[0\]"):
        SpanQATask(name="qa", max_length=32, doc_stride=8, max_question_length=8).featurize([bad], tokenizer)


@pytest.mark.parametrize("prediction, answers, em, f1", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0, 1.0),          # case and articles
    ("eiffel tower!!", ["Eiffel  Tower."], 1.0, 1.0),          # punctuation and whitespace
    ("an apple", ["the apple"], 1.0, 1.0),
    ("tower in Paris", ["Eiffel Tower"], 0.0, 0.4),            # 1 shared token of 3 and 2
    ("Paris", ["London", "paris"], 1.0, 1.0),                  # best over the gold answers
    ("", ["Paris"], 0.0, 0.0),
    ("the", ["a"], 1.0, 0.0),                                  # both normalise to "": EM, but no token for F1
])
def test_squad_em_f1_normalisation(prediction, answers, em, f1):
    assert squad_exact_match(prediction, answers) == em
    assert squad_f1(prediction, answers) == pytest.approx(f1)
    assert normalize_answer(" The  A-B,c ") == "abc"


# -- relation ------------------------------------------------------------------------------
def ie_sentence() -> IESentence:
    return IESentence(
        tokens=("bert", "improves", "ner", "in", "paris"),
        entities=(Entity(0, 0, "method"), Entity(2, 2, "task"), Entity(4, 4, "task")),
        relations=(Relation((0, 0), (2, 2), "USED-FOR", "method", "task"),),
    )


def test_relation_markers_surround_the_right_tokens(tokenizer):
    words, s, o = mark_pair(["bert", "improves", "new", "york"], (2, 3), (0, 0), "task", "method")
    assert words == ["#", "^", "method", "^", "bert", "#", "improves", "@", "*", "task", "*", "new", "york", "@"]
    assert (words[s], words[o]) == ("@", "#")
    task = RelationTask(name="re", labels=["USED-FOR"], max_length=32)
    table = task.featurize([ie_sentence()], tokenizer)
    assert len(table) == 6  # ordered pairs of 3 entities
    first = 0  # pairs come in order (0, 1), (0, 2), (1, 0), …: row 0 is bert → ner
    pieces = tokenizer.convert_ids_to_tokens(table.inputs["input_ids"][first].tolist())
    si, oi = int(table.inputs["subject_index"][first]), int(table.inputs["object_index"][first])
    assert pieces[si] == "@" and pieces[si + 4] == "bert" and pieces[si + 5] == "@"
    assert pieces[oi] == "#" and pieces[oi + 4] == "ner" and pieces[oi + 5] == "#"
    assert table.targets["re"].tolist() == [1, 0, 0, 0, 0, 0]


def test_relation_typed_marker_tokens_must_be_in_the_vocabulary(tokenizer, tmp_path):
    task = RelationTask(name="re", labels=["USED-FOR"], markers="tokens", entity_types=["method", "task"], max_length=32)
    with pytest.raises(ConfigError, match="special_tokens"):
        task.featurize([ie_sentence()], tokenizer)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    extended = BertTokenizerFast(vocab=str(path))
    extended.add_special_tokens({"additional_special_tokens": task.special_tokens()})
    table = task.featurize([ie_sentence()], extended)
    pieces = extended.convert_ids_to_tokens(table.inputs["input_ids"][0].tolist())
    si, oi = int(table.inputs["subject_index"][0]), int(table.inputs["object_index"][0])
    assert pieces[si: si + 3] == ["<S:method>", "bert", "</S:method>"]
    assert pieces[oi: oi + 3] == ["<O:task>", "ner", "</O:task>"]


def test_relation_f1_and_the_pipeline_from_predicted_entities(tokenizer):
    sentence = ie_sentence()
    task = RelationTask(name="re", labels=["USED-FOR"], max_length=32)
    table = task.featurize([sentence], tokenizer)
    oracle = torch.nn.functional.one_hot(table.targets["re"], 2).float()
    assert task.evaluate(oracle, table, [sentence]) == {
        "relation_precision": 1.0, "relation_recall": 1.0, "relation_f1": 1.0, "relation_strict_f1": 1.0}
    # End-to-end: span NER predicts "ner" with the wrong type and misses "paris".
    ner = SpanNERTask(name="ents", labels=["method", "task"], max_span_width=2, max_length=32)
    ner_table = ner.featurize([sentence], tokenizer)
    logits = torch.zeros(1, ner_table.targets["ents"].shape[1], 3)
    spans = ner_table.extras["span_words"][0].tolist()
    logits[0, spans.index([0, 0]), 1] = logits[0, spans.index([2, 2]), 1] = 5.0  # both as "method"
    predicted = ner.predict_entities(logits, ner_table, [sentence])
    assert predicted[0].entities == (Entity(0, 0, "method"), Entity(2, 2, "method"))
    assert ner.evaluate(logits, ner_table, [sentence])["entity_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    pipeline = task.featurize(predicted, tokenizer)
    guess = torch.tensor([[0.0, 5.0], [5.0, 0.0]])  # (bert → ner) = USED-FOR
    metrics = task.evaluate(guess, pipeline, predicted)
    assert metrics["relation_f1"] == 1.0 and metrics["relation_strict_f1"] == 0.0  # Rel right, Rel+ wrong type


# -- heads on the tiny BERT -----------------------------------------------------------------
def featurized(kind, tokenizer):
    if kind == "tagging":
        task = TaggingTask(name="t", labels=TAGS, max_length=24)
        examples = [TaggedSentence(("empire", "state", "building"), ("B-loc", "I-loc", "I-loc")),
                    TaggedSentence(("ada",), ("B-per",))]
    elif kind == "span_qa":
        task = SpanQATask(name="t", max_length=24, doc_stride=6, max_question_length=8, answer_classifier=True)
        examples = [long_example()]
    elif kind == "relation":
        task = RelationTask(name="t", labels=["USED-FOR"], max_length=24)
        examples = [ie_sentence()]
    else:
        task = SpanNERTask(name="t", labels=["method", "task"], max_length=24, width_dim=8)
        examples = [ie_sentence()]
    return task, task.featurize(examples, tokenizer), examples


@pytest.mark.parametrize("kind", ["tagging", "span_qa", "relation", "span_ner"])
def test_head_shapes_and_loss_on_a_tiny_bert(kind, tokenizer, bert):
    assert kind in NLP_KINDS
    task, table, examples = featurized(kind, tokenizer)
    head = task.build_head(32)
    for rows in (slice(0, 1), slice(0, len(table))):  # a batch of 1 too
        batch = table.take(rows)
        outputs = run_head(bert, head, batch.inputs)
        b, length = batch.size, int(batch.inputs["attention_mask"].sum(1).max())
        spans = table.targets["t"].shape[-1]
        expected = {"tagging": (b, length, len(TAGS)), "span_qa": (b, length, 3), "relation": (b, 2),
                    "span_ner": (b, spans, 3)}[kind]
        assert tuple(outputs.shape) == expected
        loss = task.compute_loss(outputs, batch.targets["t"], None, batch.masks["t"])
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
        loss.backward()
        weighted = task.compute_loss(outputs, batch.targets["t"], torch.full((b,), 2.0), batch.masks["t"])
        assert weighted.item() == pytest.approx(loss.item(), rel=1e-5)  # a weighted *mean*
        empty = task.compute_loss(outputs, batch.targets["t"], None, torch.zeros(b, dtype=torch.bool))
        assert empty.item() == 0.0
    with torch.no_grad():  # evaluation from per-batch outputs whose trimmed lengths differ
        outputs = [run_head(bert, head, table.take(slice(i, i + 1)).inputs) for i in range(len(table))]
    metrics = task.evaluate(outputs, table, examples)
    assert metrics and all(name in METRICS and METRICS.get(name).higher_is_better for name in metrics)


# -- readers -------------------------------------------------------------------------------
def test_conll_reader_on_wnut17(tmp_path):
    sentences = read_conll(NLP / "wnut17" / "emerging.dev.conll")
    assert len(sentences) == 1009 and sum(len(s.tokens) for s in sentences) == 15733
    train_head = read_conll(NLP / "wnut17" / "wnut17train.conll")[:2]
    assert train_head[0].tokens[14:17] == ("Empire", "State", "Building") and train_head[1].tokens[:2] == ("From", "Green")
    assert train_head[0].tags[14:17] == ("B-location", "I-location", "I-location")
    assert train_head[1].source.endswith("wnut17train.conll:29")
    assert len(tag_set(sentences)) == 13
    bad = tmp_path / "bad.conll"
    bad.write_text("hello\tO\nlonely\n")
    with pytest.raises(DataError, match=r"bad\.conll:2"):
        read_conll(bad)


def test_scierc_reader_on_shared_file(tmp_path):
    sentences = read_scierc(NLP / "scierc" / "dev.json")
    assert len(sentences) == 275 and sum(len(s.entities) for s in sentences) == 811
    assert sum(len(s.relations) for s in sentences) == 455
    first = sentences[0]
    assert first.entities[0] == Entity(4, 4, "Generic") and first.span_text((4, 4)) == "algorithm"
    second = sentences[1]
    assert second.entities[0].span == (1, 1) and second.span_text(second.entities[0].span) == "problem"
    assert len(second.left) == len(first.tokens)
    assert len(entity_types(sentences)) == 6 and len(relation_types(sentences)) == 7
    doc = json.loads((NLP / "scierc" / "dev.json").read_text().splitlines()[0])
    doc["ner"][1].append([0, 2, "Task"])  # document offset 0 lies in sentence 0, not 1
    bad = tmp_path / "bad.json"
    bad.write_text("\n" + json.dumps(doc) + "\n")
    with pytest.raises(DataError, match=r"bad\.json:2 sentence 1: span \[0, 2\]"):
        read_scierc(bad)


def test_squad_reader_and_paragraph_split(tmp_path):
    examples = read_squad(NLP / "xquad_en" / "xquad.en.json")
    assert len(examples) == 1190 and examples[0].answers[0].text == "308"
    splits = split_paragraphs(examples, seed=0)
    assert sum(len(v) for v in splits.values()) == 1190
    held = [{ex.paragraph for ex in v} for v in splits.values()]
    assert sum(len(p) for p in held) == 240 and not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    assert split_paragraphs(examples, seed=0) == splits and split_paragraphs(examples, seed=1) != splits
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "1"}]}]}]}))
    with pytest.raises(DataError, match=r"bad\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]"):
        read_squad(bad)


def test_labels_resolve_from_training_data():
    sentences = [TaggedSentence(("ada", "paris"), ("B-per", "B-loc"))]
    assert TaggingTask(name="t").resolve(sentences).labels == ["O", "B-loc", "I-loc", "B-per", "I-per"]
    with pytest.raises(ConfigError, match="resolve"):
        TaggingTask(name="t").build_head(32)
    relation = RelationTask(name="r", markers="tokens").resolve([ie_sentence()])
    assert relation.labels == ["USED-FOR"] and relation.entity_types == ["method", "task"]
    assert relation.special_tokens()[:2] == ["<S:method>", "</S:method>"]
    assert SpanNERTask(name="e").resolve([ie_sentence()]).classes == ["none", "method", "task"]


def test_all_span_kinds_in_one_multitask_model(tokenizer, bert):
    from mtlkit.nlp.model import NLPMultiTaskModel

    parts = {kind: featurized(kind, tokenizer) for kind in ("tagging", "span_qa", "relation", "span_ner")}
    tasks = [task.model_copy(update={"name": kind}) for kind, (task, _, _) in parts.items()]
    model = NLPMultiTaskModel({"shared": bert}, tasks)
    for task in tasks:
        _, table, _ = parts[task.name]
        batch = table.take(slice(0, 2))
        outputs = model(batch.inputs, (task.name,))
        assert set(outputs) == {task.name}
        loss = task.compute_loss(outputs[task.name], batch.targets["t"], None, batch.masks["t"])
        assert torch.isfinite(loss) and loss > 0


def test_relation_without_pairs_scores_every_gold_relation_as_missed(tokenizer):
    task = RelationTask(name="re", labels=["USED-FOR"], max_length=32)
    lonely = ie_sentence().with_entities([Entity(0, 0, "method")])
    table = task.featurize([lonely], tokenizer)
    assert len(table) == 0
    assert task.evaluate([], table, [lonely])["relation_recall"] == 0.0


def test_write_split_keeps_paragraphs_whole(tmp_path):
    from mtlkit.nlp.readers.squad import write_split

    files = write_split(NLP / "xquad_en" / "xquad.en.json", tmp_path, seed=0)
    parts = {name: read_squad(f) for name, f in files.items()}
    expected = split_paragraphs(read_squad(NLP / "xquad_en" / "xquad.en.json"), seed=0)
    for name in parts:
        assert [ex.id for ex in parts[name]] == [ex.id for ex in expected[name]]
    contexts = [{ex.context for ex in part} for part in parts.values()]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2])


def test_cross_sentence_context_keeps_markers_and_spans_on_the_sentence(tokenizer):
    sentence = IESentence(("bert", "improves", "ner"), (Entity(0, 0, "method"), Entity(2, 2, "task")),
                          left=("the", "city", "of", "paris"), right=("was", "built"))
    relation = RelationTask(name="re", labels=["USED-FOR"], context_window=2, max_length=40)
    table = relation.featurize([sentence], tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(table.inputs["input_ids"][0].tolist())
    assert pieces[1:3] == ["of", "paris"] and pieces[int(table.inputs["subject_index"][0]) + 4] == "bert"
    ner = SpanNERTask(name="e", labels=["method", "task"], context_window=2, max_span_width=1, max_length=40)
    ner_table = ner.featurize([sentence], tokenizer)
    assert ner_table.extras["span_words"][0].tolist() == [[0, 0], [1, 1], [2, 2]]  # context words are no candidates
    starts = ner_table.inputs["span_starts"][0].tolist()
    assert [tokenizer.convert_ids_to_tokens(int(table_id)) for table_id in ner_table.inputs["input_ids"][0, starts]] == \
        ["bert", "improves", "ner"]


def test_end_to_end_relations_score_the_entity_models_predictions(tokenizer, bert):
    """The pipeline equals predict entities → re-featurize → classify pairs, done by hand."""
    from mtlkit.nlp.evaluation import predict_task
    from mtlkit.nlp.model import NLPMultiTaskModel
    from mtlkit.nlp.pipeline import end_to_end_relations

    ner = SpanNERTask(name="ents", labels=["method", "task"], max_span_width=2, max_length=32, width_dim=8)
    rel = RelationTask(name="re", labels=["USED-FOR"], max_length=32)
    torch.manual_seed(0)
    model = NLPMultiTaskModel({"shared": bert}, [ner, rel]).train()
    with torch.no_grad():  # make the entity head call every span an entity, so pairs exist
        last = [m for m in model.heads["ents"].modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.copy_(torch.tensor([-50.0, 50.0, 0.0]))
    sentences = [ie_sentence(), ie_sentence().with_entities([])]
    scores = end_to_end_relations(model, ner, rel, sentences, tokenizer, batch_size=1)
    assert model.training  # mode restored
    model.eval()
    table = ner.featurize(sentences, tokenizer)
    outputs, _, _ = predict_task(model, ner, table, 8)
    predicted = ner.predict_entities(outputs, table, sentences)
    assert all(e.type == "method" for s in predicted for e in s.entities) and len(predicted[1].entities) >= 2
    pairs = rel.featurize(predicted, tokenizer)
    by_hand = rel.evaluate(predict_task(model, rel, pairs, 8)[0], pairs, predicted)
    assert scores == by_hand
    assert scores["relation_strict_f1"] == 0.0  # every predicted entity is a "method": no strict match is possible


def test_end_to_end_relations_without_any_predicted_pair(tokenizer, bert):
    """An entity model that finds nothing: no relation rows at all, every gold relation a miss (no crash)."""
    from mtlkit.nlp.model import NLPMultiTaskModel
    from mtlkit.nlp.pipeline import end_to_end_relations

    ner = SpanNERTask(name="ents", labels=["method", "task"], max_span_width=2, max_length=32, width_dim=8)
    rel = RelationTask(name="re", labels=["USED-FOR"], max_length=32)
    model = NLPMultiTaskModel({"shared": bert}, [ner, rel])
    with torch.no_grad():
        [m for m in model.heads["ents"].modules() if isinstance(m, torch.nn.Linear)][-1].bias.copy_(torch.tensor([50.0, -50.0, -50.0]))
    scores = end_to_end_relations(model, ner, rel, [ie_sentence()], tokenizer)
    assert scores["relation_recall"] == 0.0 and scores["relation_f1"] == 0.0


def test_pos_tags_train_with_scheme_labels_and_are_refused_by_the_bio_scheme(tokenizer):
    from mtlkit.errors import ConfigError
    from mtlkit.nlp.config import parse_nlp_config
    from mtlkit.nlp.span_metrics import token_accuracy

    sentences = [TaggedSentence(("paris", "sleeps"), ("NNP", "VBZ")), TaggedSentence(("the", "cat"), ("DT", "NN"))]
    pos = TaggingTask(name="pos", scheme="labels", max_length=16).resolve(sentences)
    assert pos.labels == ["DT", "NN", "NNP", "VBZ"] and pos.metrics == ["token_accuracy"]
    table = pos.featurize(sentences[:1], tokenizer)
    logits = torch.full((1, table.inputs["input_ids"].shape[1], 4), -5.0)
    logits[0, 1, 2] = logits[0, 2, 0] = 5.0  # paris → NNP (right), sleeps → DT (wrong)
    assert pos.evaluate([logits], table, sentences[:1]) == {"token_accuracy": 0.5}
    assert token_accuracy([["A", "B", "C"]], [["A", "B"]]) == pytest.approx(2 / 3)  # a word without a prediction is wrong
    with pytest.raises(ConfigError, match="tag 'DT' of its training data is not a BIO tag.*set scheme: labels"):
        TaggingTask(name="pos").resolve(sentences)
    with pytest.raises(ValueError, match="not BIO tags.*scheme: labels"):
        TaggingTask(name="pos", labels=["O", "NN"])
    with pytest.raises(ValueError, match="entity_f1 needs BIO entities"):
        TaggingTask(name="pos", scheme="labels", metrics=["entity_f1"])
    raw = {"encoder": {"name": "x"}, "tasks": [{"name": "pos", "kind": "tagging", "labels": ["NN", "VB"], "data": {"train": "a.conll", "format": "conll"}}]}
    with pytest.raises(ConfigError, match=r"c\.yaml: key .tasks\.0.: labels: .*scheme: labels"):
        parse_nlp_config(raw, "c.yaml")
    raw["tasks"][0]["scheme"] = "labels"
    assert parse_nlp_config(raw, "c.yaml").tasks[0].task.metrics == ["token_accuracy"]
