"""Metrics: text similarity, AUROC/AUPRC, bootstrap statistics (pure functions, thin wrappers).

* :mod:`metrics.text`: BERTScore presets (``milan``, ``dnd``, ``offline``), sentence-embedding
  cosine, CLIP ViT-B/16 text cosine (unavailable offline). Heavy libraries load on first use.
* :mod:`metrics.classification`: AUROC and AUPRC with exact tie handling.
* :mod:`metrics.stats`: seeded bootstrap intervals over units, paired bootstrap, significance
  groups.
* :mod:`metrics.result`: :class:`~metrics.result.MetricResult`, what every wrapper returns.
"""
