"""Metrics: text similarity, AUROC/AUPRC, bootstrap statistics (pure functions, thin wrappers)."""
