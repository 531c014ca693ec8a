"""Training heads on cached features: ``graft fit`` (``fit.py``), choosing the head out of fold (``crossfit.py``,
``families.py``, ``fold_heads.py``, ``choice.py``), training one (``head_training.py``, ``streaming.py`` for features on
disk), fitting ensembles' weights (``ensembling.py``) and the training history. Fine-tuning the whole network is
:mod:`graft.finetuning`; both share the trainer factory in ``lightning.py``.

(No re-exports here: ``graft.training.fit`` is the module; ``graft.fit`` is the function.)"""
