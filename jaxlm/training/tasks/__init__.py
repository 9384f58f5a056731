"""One Task per objective, and the registry that picks a run's by `data.format`.

    text        PretrainTask    next-token loss on packed documents (next_token.py)
    chat        ChatTask        the same loss on assistant tokens only (next_token.py)
    preference  PreferenceTask  DPO / IPO / SimPO + NLL on chosen/rejected pairs
                                (preference.py)
    reward      RewardModelTask Bradley-Terry reward model on the same pairs, scored by a
                                scalar head (reward_model.py)
    rl          RLTask          GRPO / Dr.GRPO / DAPO on prompts with reward functions
                                (rl.py)
    text, chat with distill.teacher set:
                DistillTextTask, DistillChatTask  the same data, learning from a teacher's
                                distributions (online, top-k table, or on-policy; distill.py)

A Task (base.py) holds everything that depends on what a run optimises; the loop
asks it and never branches on the format. A new objective is one file here and one
entry in TASKS. May import models, data, checkpointing, runtime and the rest of
jaxlm.training; imported by the run's setup (jaxlm.training.setup) and by `jaxlm
eval` (jaxlm.evaluation.language_model), which reads a run's held-out data the way
its Task does.
"""

from __future__ import annotations

from jaxlm.config import Config
from jaxlm.training.tasks.base import Steps, Task
from jaxlm.training.tasks.distill import DistillChatTask, DistillTextTask
from jaxlm.training.tasks.next_token import ChatTask, PretrainTask
from jaxlm.training.tasks.preference import PreferenceTask
from jaxlm.training.tasks.reward_model import RewardModelTask
from jaxlm.training.tasks.rl import RLTask

TASKS: dict[str, type[Task]] = {
    "text": PretrainTask,
    "chat": ChatTask,
    "preference": PreferenceTask,
    "reward": RewardModelTask,
    "rl": RLTask,
}


# With distill.teacher set, text and chat runs learn from the teacher (distill.py).
DISTILL_TASKS: dict[str, type[Task]] = {"text": DistillTextTask, "chat": DistillChatTask}


def task_for(cfg: Config) -> Task:
    """The Task of `cfg`'s run (data.format's choices are TASKS' keys)."""
    if cfg.distill.enabled:
        return DISTILL_TASKS[cfg.data.format](cfg)
    return TASKS[cfg.data.format](cfg)


__all__ = ["TASKS", "Steps", "Task", "task_for"]
