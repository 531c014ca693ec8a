"""Fine-tuning the whole network from a trained run: the head on the backbone, trained further at a low learning rate,
kept only if it beats the head alone on the validation split (``finetune.py``, the Lightning module ``module.py``,
the head it starts from and its temperature ``start.py``, each family's optimizer ``optimizers.py``).

(No re-exports here: ``graft.finetuning.finetune`` is the module; ``graft.finetune`` is the function.)"""
