"""Exact eval metrics: against scikit-learn, and split across 'ranks' without a process group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, top_k_accuracy_score

from pipeline.distributed import DistInfo
from pipeline.metrics import EvalAccumulator, compute_result, write_per_class_csv


def random_eval(num_samples=101, num_classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_samples, num_classes, generator=generator)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    boosted = num_samples // 2
    logits[torch.arange(boosted), labels[:boosted]] += 2.0  # some signal: top-1 well above chance
    return logits, labels


def test_top1_top5_loss_and_macro_f1_match_scikit_learn_and_torch():
    logits, labels = random_eval()
    accumulator = EvalAccumulator(7, "cpu")
    for start in range(0, 101, 16):
        accumulator.update(logits[start : start + 16], labels[start : start + 16])
    result = accumulator.reduce(DistInfo())  # a world of one: no process group needed
    predictions = logits.argmax(1).numpy()
    assert result.top1 == pytest.approx(100 * (predictions == labels.numpy()).mean())
    assert result.top5 == pytest.approx(
        100 * top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=range(7))
    )
    assert result.macro_f1 == pytest.approx(
        100 * f1_score(labels.numpy(), predictions, average="macro")
    )
    assert result.loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6
    )
    assert result.num_samples == 101 and sum(result.per_class_support) == 101


def test_an_odd_val_set_split_unevenly_over_two_ranks_sums_to_the_single_rank_result():
    logits, labels = random_eval(num_samples=37)
    whole = EvalAccumulator(7, "cpu")
    whole.update(logits, labels)
    ranks = [EvalAccumulator(7, "cpu"), EvalAccumulator(7, "cpu")]
    ranks[0].update(logits[:19], labels[:19])
    for start in range(19, 37, 4):  # rank 1 sees more, smaller batches
        ranks[1].update(logits[start : start + 4], labels[start : start + 4])
    expected = whole.reduce(DistInfo())
    rank_results = [
        r.reduce(DistInfo()) for r in ranks
    ]  # each rank's own sums; then what all_reduce_sum adds up
    combined = compute_result(
        ranks[0].confusion + ranks[1].confusion, ranks[0].sums + ranks[1].sums
    )
    assert (combined.top1, combined.top5, combined.macro_f1, combined.per_class_correct) == (
        expected.top1,
        expected.top5,
        expected.macro_f1,
        expected.per_class_correct,
    )
    assert combined.loss == pytest.approx(expected.loss, rel=1e-12)
    # whereas the mean of per-rank top-1s is not the answer
    rank_top1 = [r.top1 for r in rank_results]
    assert np.mean(rank_top1) != pytest.approx(expected.top1)


def test_top5_is_capped_at_the_number_of_classes():
    accumulator = EvalAccumulator(2, "cpu")
    accumulator.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]))
    result = accumulator.reduce(DistInfo())
    assert (result.top1, result.top5) == (50.0, 100.0)


def test_per_class_csv_names_every_class_with_support_and_accuracy(tmp_path):
    logits, labels = random_eval(num_samples=30, num_classes=3)
    accumulator = EvalAccumulator(3, "cpu")
    accumulator.update(logits, labels)
    result = accumulator.reduce(DistInfo())  # a world of one: no process group needed
    path = write_per_class_csv(
        result, ["n1", "n2", "n3"], {"n2": "goldfish"}, tmp_path / "per_class.csv"
    )
    rows = path.read_text().splitlines()
    assert rows[0] == "class_index,wnid,name,support,correct,accuracy"
    assert rows[2].startswith("1,n2,goldfish,")
    assert sum(int(r.split(",")[3]) for r in rows[1:]) == 30
