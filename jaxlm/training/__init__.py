"""Training: the loop, the train state, the steps and what each objective needs.

    loop.py          `train(cfg, workdir)`: setup, the step loop, finish
    state.py         TrainState and its sharded initialisation
    steps.py         pure train and eval steps, and where they are jitted
    losses.py, preference_losses.py   next-token and preference objectives
    rl_losses.py     RL formulas: group advantages, clipped surrogate, k3 KL, GAE
    rl_steps.py      RL's jitted rollout (G responses per prompt) and update
    rewards.py       RL rewards: built-in checks, your functions, weighted components
    optim.py         AdamW, schedules, clipping
    metrics.py       metrics.jsonl and TensorBoard writer, compression baselines
    experiment.py    experiments found by name or path, their config resolved
    init_from_shape.py  the model shape a run takes from train.init_from
    epochs.py        train.epochs as a step count over the packed data
    sweep.py         every point of an experiment's sweep() in its own workdir
    tasks/           one file per objective (pretraining and SFT, preference, RL), and a
                     registry: a new objective is a new file there plus one entry

May import: the root modules, models, data, checkpointing, runtime, analysis (loss
curves, the metrics reader) and inference (the Generator for a closing sample). Only
evaluation, commands and the CLI import training.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
