"""ELECTRA's generator for replaced-token detection (corruption: generator): sampling, learning, exact resume."""

from __future__ import annotations

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it: a missing one fails, never skips)

from mtlkit.errors import ConfigError
from mtlkit.nlp.config import parse_nlp_config
from mtlkit.nlp.electra import sample_inverse_cdf
from mtlkit.nlp.examples import TextExample
from mtlkit.nlp.kinds.replaced_token import CHOSEN, ReplacedTokenTask
from mtlkit.nlp.model import NLPMultiTaskModel
from nlp_resume import train_whole_and_resumed, validation_log

from conftest import SHARED_DATA
from tiny_bert import save_tiny_bert

NLP = SHARED_DATA / "nlp"
TEXTS = [TextExample("it 's a charming and often affecting journey .", label="1"), TextExample("bleak and desperate", label="0"),
         TextExample("kids , spirit and a man", label="1"), TextExample("a man is playing a flute .", label="1")] * 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("electra_bert")
    torch.set_num_threads(1)
    tokenizer, bert = save_tiny_bert(root, [(NLP / "sst2" / "train.tsv", 60)], dropout=0.0)
    return root, tokenizer, bert


def test_inverse_cdf_samples_follow_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, 4)
    uniform = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_inverse_cdf(logits, uniform), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.softmax(logits[0], 0), atol=0.01)


def _model(bert, task):
    import copy

    torch.manual_seed(0)
    return NLPMultiTaskModel({"shared": copy.deepcopy(bert)}, [task])


def test_generator_corrupts_the_chosen_tokens_at_the_chosen_rate_and_deterministically(tiny):
    _, tokenizer, bert = tiny
    task = ReplacedTokenTask(name="rtd", probability=0.3, max_length=16, corruption="generator")
    table = task.featurize(TEXTS, tokenizer)
    model = _model(bert, task).eval()
    batch = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(3))
    again = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(3))
    assert all(torch.equal(batch.inputs[k], again.inputs[k]) for k in batch.inputs)  # a function of the step generator
    head = model.heads["rtd"]
    rewritten = head.rewrite_inputs(batch.inputs)
    assert torch.equal(rewritten["input_ids"], head.rewrite_inputs(again.inputs)["input_ids"])  # same weights, same samples
    original, eligible = table.inputs["input_ids"], table.targets["rtd"] != -100
    chosen, replaced = batch.inputs[CHOSEN], rewritten["input_ids"] != original
    assert torch.equal(batch.inputs["input_ids"], original)  # the data side only chooses; the model samples
    assert not (chosen & ~eligible).any() and not (replaced & ~chosen).any()  # specials, padding, unchosen tokens kept
    rate = float(chosen.sum() / eligible.sum())
    assert rate == pytest.approx(0.3, abs=0.06)
    # an untrained generator is near uniform over the vocabulary: almost every sample differs from the original
    assert float(replaced.sum() / eligible.sum()) == pytest.approx(rate, rel=0.1)
    outputs = model(batch.inputs, ("rtd",))["rtd"]  # (B, L', 4): logit, replaced, chosen, generator NLL
    length = outputs.shape[1]
    assert torch.equal(outputs[..., 1].bool(), replaced[:, :length]) and torch.equal(outputs[..., 2].bool(), chosen[:, :length])
    assert (outputs[..., 3][chosen[:, :length]] > 0).all() and (outputs[..., 3][~chosen[:, :length]] == 0).all()
    one = task.transform_batch(table.take(slice(0, 1)), torch.Generator().manual_seed(5))  # a batch of one
    assert model(one.inputs, ("rtd",))["rtd"].shape[0] == 1


def test_the_discriminator_loss_never_reaches_the_generator(tiny):
    _, tokenizer, bert = tiny
    task = ReplacedTokenTask(name="rtd", probability=0.3, max_length=16, corruption="generator", discriminator_weight=1.0)
    table = task.featurize(TEXTS, tokenizer)
    model = _model(bert, task)
    batch = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(1))
    outputs = model(batch.inputs, ("rtd",))["rtd"]
    logits, labels, valid = task._parts(outputs, batch.targets["rtd"])
    torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid].float()).backward()
    generator = model.heads["rtd"].generator
    assert all(p.grad is None or not p.grad.any() for p in generator.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.heads["rtd"].classifier.parameters())


def test_generator_loss_decreases_and_replacements_become_plausible(tiny):
    _, tokenizer, bert = tiny
    task = ReplacedTokenTask(name="rtd", probability=0.25, max_length=16, corruption="generator", discriminator_weight=5.0)
    table = task.featurize(TEXTS, tokenizer)
    model = _model(bert, task)
    fixed = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(999))

    def measure():
        with torch.no_grad():
            model.eval()
            sums = task.eval_outputs(model(fixed.inputs, ("rtd",))["rtd"], fixed)
            model.train()
        return task.evaluate(sums, table, TEXTS), float(sums[:, 2].sum() / sums[:, 3].sum())

    before, nll_before = measure()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(80):
        batch = task.transform_batch(table.take(slice(0, len(table))), torch.Generator().manual_seed(step))
        loss = task.compute_loss(model(batch.inputs, ("rtd",))["rtd"], batch.targets["rtd"], None, batch.masks["rtd"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, nll_after = measure()
    assert set(after) == {"replaced_token_accuracy", "generator_perplexity"}
    assert nll_after < 0.5 * nll_before, (nll_before, nll_after)  # four sentences repeated: the generator learns them
    assert after["generator_perplexity"] < before["generator_perplexity"] / 4


def _config(root, **train):
    return parse_nlp_config({
        "seed": 0, "encoder": {"name": str(root)},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "patience": None, "checkpoint_every": 2, **train},
        "tasks": [{"name": "sst2", "kind": "classification", "max_length": 24,
                   "data": {"train": str(NLP / "sst2" / "train.tsv"), "validation": str(NLP / "sst2" / "dev.tsv"),
                            "format": "glue_tsv", "max_rows": {"train": 24, "validation": 8}}},
                  {"name": "rtd", "kind": "replaced_token", "max_length": 24, "corruption": "generator", "discriminator_weight": 10,
                   "data": {"from_tasks": ["sst2"]}}]})


def test_an_interrupted_generator_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    """Choices and the uniforms of the samples are functions of (seed, epoch, step): a resumed run matches bit for bit."""
    root, _, _ = tiny
    config = _config(root)
    whole, resumed = train_whole_and_resumed(config, tmp_path, monkeypatch, interrupt_at=9)  # mid-epoch 2, one step after a checkpoint
    assert {"replaced_token_accuracy", "generator_perplexity"} <= set(whole["validation"]["rtd"])
    assert resumed["validation"] == whole["validation"]
    assert validation_log(tmp_path / "resumed") == validation_log(tmp_path / "whole")
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "best.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options, key", [
    ({"generator_layers": 2}, "generator_layers"),              # a generator option with uniform corruption
    ({"discriminator_weight": 10}, "discriminator_weight"),
    ({"corruption": "gan"}, "corruption"),
    ({"corruption": "generator", "generator_width": 30, "generator_heads": 4}, "generator_width"),
    ({"metrics": ["generator_perplexity"]}, "generator_perplexity"),
])
def test_bad_generator_options_are_one_line_config_errors(options, key):
    with pytest.raises(ConfigError, match=key) as error:
        parse_nlp_config({"encoder": {"name": "x"}, "tasks": [
            {"name": "a", "kind": "classification", "data": {"train": "a.tsv", "format": "glue_tsv"}},
            {"name": "rtd", "kind": "replaced_token", "data": {"from_tasks": ["a"]}, **options}]}, "c.yaml")
    assert "\n" not in str(error.value)
