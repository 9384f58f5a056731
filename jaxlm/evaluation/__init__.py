"""Evaluation beyond the training loop's held-out loss.

    position_loss.py   mean next-token loss at each position of long documents
    language_model.py  loss, perplexity and bits per byte on data sources (`jaxlm eval`)
    multiple_choice.py log-likelihood multiple choice, lm-evaluation-harness style
    reward_scores.py   a reward model's scores of responses and pairs (`jaxlm reward score`)

May import: the root modules, models, data, checkpointing, inference (to load a model)
and training (its eval steps and metrics, so that `jaxlm eval` and the run's own eval
report the same numbers). Nothing in training imports evaluation.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
