"""Training (METHOD.md §6): the student fine-tuned on the selected data with TRL, LoRA or full.

``rules`` is the recipe as data and its checks, ``data`` the rows, ``plan`` the dry-run estimate,
``trainer`` the TRL trainer, ``folder`` the run and model folders' rules, ``save`` what a saved
model folder carries (its prompt template), ``run`` the verb. torch, transformers, trl and peft load
only when training starts.
"""

from reflectune.training.plan import TrainPlan, plan_training
from reflectune.training.rules import TrainConfig
from reflectune.training.run import TrainResult, train

__all__ = ["TrainConfig", "TrainPlan", "TrainResult", "plan_training", "train"]
