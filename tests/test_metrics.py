"""ACC / ASR / RA / target-class accuracy on a hand-made case with a model of known predictions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from abd.metrics import EvalData, detection_auc, evaluate, format_metrics, per_class_accuracy, predict


class LookupModel(nn.Module):
    """Predicts ``table[i]`` for an input whose first pixel holds the integer ``i``."""

    def __init__(self, table: list[int], num_classes: int) -> None:
        super().__init__()
        self.table = torch.tensor(table)
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))  # predict() reads the device from the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 0].long()
        return 10.0 * nn.functional.one_hot(self.table[idx], self.num_classes).float() + 0 * self.dummy


def inputs(ids: list[int]) -> torch.Tensor:
    x = torch.zeros(len(ids), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
    return x


# clean test set: 10 images, 3 classes, target 0
Y_CLEAN = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
P_CLEAN = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2]  # correct: 2/4 of class 0, 2/3 of class 1, 3/3 of class 2
# triggered non-target images (ids 10..15): true labels and predictions
Y_POISON = [1, 1, 1, 2, 2, 2]
P_POISON = [0, 0, 1, 0, 2, 1]  # 3 predicted as target, 2 as their true label, 1 as neither


@pytest.fixture
def case() -> tuple[LookupModel, EvalData]:
    model = LookupModel(P_CLEAN + P_POISON, num_classes=3)
    data = EvalData(
        x_clean=inputs(list(range(10))), y_clean=torch.tensor(Y_CLEAN), num_classes=3, target=0,
        x_poison=inputs(list(range(10, 16))), y_poison=torch.tensor(Y_POISON),
    )
    return model, data


def test_hand_made_case(case: tuple[LookupModel, EvalData]) -> None:
    model, data = case
    m = evaluate(model, data, batch_size=4)  # several batches
    assert m["acc"] == pytest.approx(7 / 10)
    assert m["acc_n"] == 10
    assert m["per_class_acc"] == pytest.approx([2 / 4, 2 / 3, 3 / 3])
    assert m["target_acc"] == pytest.approx(2 / 4)
    assert m["asr"] == pytest.approx(3 / 6)
    assert m["ra"] == pytest.approx(2 / 6)
    assert m["asr_n"] == 6
    text = format_metrics(m)
    assert "ACC 70.00% (n=10)" in text and "ASR 50.00% (n=6)" in text and "RA 33.33%" in text
    assert "target-class ACC 50.00%" in text


def test_predict_restores_training_mode(case: tuple[LookupModel, EvalData]) -> None:
    model, data = case
    model.train()
    assert predict(model, data.x_clean).tolist() == P_CLEAN
    assert model.training


def test_clean_only() -> None:
    model = LookupModel(P_CLEAN, num_classes=3)
    m = evaluate(model, EvalData(inputs(list(range(10))), torch.tensor(Y_CLEAN), 3))
    assert m["acc"] == pytest.approx(0.7)
    assert "asr" not in m and "target_acc" not in m


def test_asr_set_must_exclude_target() -> None:
    with pytest.raises(ValueError, match="exclude"):
        EvalData(inputs([0]), torch.tensor([0]), 3, target=0, x_poison=inputs([1, 2]),
                 y_poison=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="target"):
        EvalData(inputs([0]), torch.tensor([0]), 3, target=None, x_poison=inputs([1]),
                 y_poison=torch.tensor([1]))


def test_per_class_accuracy_absent_class_is_nan() -> None:
    acc = per_class_accuracy(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 3)
    assert acc[0] == 0.5 and acc[1] == 0.0 and math.isnan(acc[2])


def test_detection_auc() -> None:
    assert detection_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert detection_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert detection_auc([1.0, 3.0], [2.0, 2.0]) == 0.5
