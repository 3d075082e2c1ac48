"""The MILAN benchmark's arithmetic count (perf/milan_perf.py), which its ceiling rests on."""

from __future__ import annotations

import torch

from methods.milan.model import LanguageModel, LanguageModelConfig
from perf import milan_perf


def test_lm_lstm_flops_per_row_is_the_hand_count() -> None:
    lm = LanguageModel(
        LanguageModelConfig(vocab_size=9, pad_index=8, embedding_size=4, hidden_size=6)
    )
    # 2 FLOPs per multiply-add, 4 gates, input + recurrent weights, per layer.
    assert milan_perf.lm_lstm_flops_per_row(lm) == 2 * 4 * 6 * (4 + 6) + 2 * 4 * 6 * (6 + 6)


def test_counted_flops_adds_the_lstm_the_counter_misses() -> None:
    lm = LanguageModel(
        LanguageModelConfig(vocab_size=9, pad_index=8, embedding_size=4, hidden_size=6)
    ).eval()
    tokens = torch.randint(0, 8, (3, 5))
    with torch.no_grad():
        flops = milan_perf.counted_flops(lambda: lm(tokens), lm)
    rows = 3 * 5
    lstm = rows * milan_perf.lm_lstm_flops_per_row(lm)
    output = 2 * rows * 6 * 9  # the output layer, an addmm the counter sees
    assert flops == lstm + output


def test_benchmark_runs_on_tiny_released_sizes(capsys) -> None:
    rc = milan_perf.main(
        [
            "--workload", "released", "--units", "3", "--single", "2", "--vocab", "20",
            "--features", "8", "--beam", "4", "--train-units", "8",
            "--threads", str(torch.get_num_threads()),  # leave the session's threads alone
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "units/s" in out and "ceiling" in out and "one epoch" in out
