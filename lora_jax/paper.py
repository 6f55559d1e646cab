"""Numbers quoted from the LoRA paper, kept apart from anything lora_jax measures.

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685,
Table 2 (GLUE dev, RoBERTa-base rows). Metrics: Matthews correlation for CoLA, Pearson for
STS-B, accuracy for the others (MNLI: matched). Rows marked * in the paper are taken from prior
work; LoRA and adapter scores are medians over 5 seeds with the spread after ±. The notebooks
and slides print these beside our results, labelled as the paper's.
"""

from __future__ import annotations

PAPER = "Hu et al. (2021), arXiv:2106.09685"
TABLE2_TASKS = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")

# method -> (trainable parameters as printed, {task: score x100}, average as printed)
TABLE2_ROBERTA_BASE: dict[str, tuple[str, dict[str, float], float]] = {
    "full": ("125.0M", dict(zip(TABLE2_TASKS, (87.6, 94.8, 90.2, 63.6, 92.8, 91.9, 78.7, 91.2),
                                strict=True)), 86.4),
    "bitfit": ("0.1M", dict(zip(TABLE2_TASKS, (84.7, 93.7, 92.7, 62.0, 91.8, 84.0, 81.5, 90.8),
                                strict=True)), 85.2),
    "adapter (AdptD, 0.3M)": ("0.3M", dict(zip(
        TABLE2_TASKS, (87.1, 94.2, 88.5, 60.8, 93.1, 90.2, 71.5, 89.7), strict=True)), 84.4),
    "adapter (AdptD, 0.9M)": ("0.9M", dict(zip(
        TABLE2_TASKS, (87.3, 94.7, 88.4, 62.6, 93.0, 90.6, 75.9, 90.3), strict=True)), 85.4),
    "lora": ("0.3M", dict(zip(TABLE2_TASKS, (87.5, 95.1, 89.7, 63.4, 93.3, 90.8, 86.6, 91.5),
                              strict=True)), 87.2),
}
