"""The names of what a trial reports, as the analysis reads them from MLflow.

A copy of ``trainables/report.py``'s (the analysis imports no trainables); a test checks that
the two agree.
"""

from __future__ import annotations

# Trial outcomes (the ``fishtune.outcome`` tag of a child run).
COMPLETED, DIVERGED, FAILED, EARLY_STOPPED = "completed", "diverged", "failed", "early_stopped"

# Step-level curves and the per-epoch validation accuracy, indexed by step.
EPOCH = "epoch"
TRAIN_LOSS, TRAIN_EXAMPLES = "train_loss", "train_examples"
FISHER_TRACE, FISHER_TRACE_STDERR = "fisher_trace", "fisher_trace_stderr"
FISHER_TRACE_NOISY, FISHER_TRACE_NOISY_STDERR = "fisher_trace_noisy", "fisher_trace_noisy_stderr"  # label noise only
FISHER_TRACE_CLEAN, FISHER_TRACE_CLEAN_STDERR = "fisher_trace_clean", "fisher_trace_clean_stderr"
FISHER_LAMBDA_MAX, FISHER_LAMBDA_MAX_LR = "fisher_lambda_max", "fisher_lambda_max_lr"  # fisher.spectrum only
HESSIAN_TRACE, HESSIAN_TRACE_STDERR = "hessian_trace", "hessian_trace_stderr"  # hessian.trace only
VAL_ACCURACY = "val_accuracy"
TRAIN_ACCURACY_NOISY, TRAIN_ACCURACY_CLEAN = "train_accuracy_noisy", "train_accuracy_clean"  # label noise only

# The trainable's final summary.
FINAL_TEST_ACCURACY, FINAL_VAL_ACCURACY = "final_test_accuracy", "final_val_accuracy"
BEST_TEST_ACCURACY = "best_test_accuracy"
EARLY_FISHER_TRACE = "early_fisher_trace"
FISHER_PEAK, FISHER_PEAK_STEP = "fisher_peak", "fisher_peak_step"
SUMMARY_METRICS = (
    FINAL_TEST_ACCURACY,
    FINAL_VAL_ACCURACY,
    BEST_TEST_ACCURACY,
    EARLY_FISHER_TRACE,
    FISHER_PEAK,
    FISHER_PEAK_STEP,
)
