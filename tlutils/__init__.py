"""tlutils: the code behind the Transfer Learning Lab notebooks.

Modules:
    assets: one resolver for pre-trained weights and data sets (offline first).
    models: loaders that turn resolved assets into ready models.
    data: data set loaders, balanced subsets, seeded splits, model-fitting transforms.
    surgery: freeze, unfreeze, replace heads, count parameters, layer-wise parameter groups.
    train: ``fit`` and ``evaluate`` for classifiers, with a self-plotting history.
    features: frozen-backbone feature extraction with an on-disk cache.
    metrics, plots, utils: the small helpers around them.
"""

__version__ = "0.1.0"
