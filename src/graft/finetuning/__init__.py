"""Fine-tuning the whole network from a trained run: the head on the backbone, trained further at a low learning rate,
kept only if it beats the head alone on the validation split. ``finetune.py`` trains, ``keep.py`` keeps the better
model, ``module.py`` is the Lightning module, ``start.py`` the head it starts from and its temperature,
``optimizers.py`` each family's optimizer.

(No re-exports here: ``graft.finetuning.finetune`` is the module; ``graft.finetune`` is the function.)"""
