"""Training: choosing and training the head on cached features (``fit.py``, ``crossfit.py``,
``families.py``, ``head.py``), fine-tuning the whole network (``finetune.py``, ``finetune_module.py``), one-group
augmentation, ensembles, and the training history. Both trainers share ``lightning.py``.

(No re-exports here: ``graft.training.fit`` is the module; ``graft.fit`` is the function.)"""
