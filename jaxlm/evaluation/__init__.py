"""Evaluation beyond the training loop's held-out loss.

position_loss.py   mean next-token loss at each position of long documents
language_model.py  loss, perplexity and bits per byte on data sources (`jaxlm eval`)
multiple_choice.py log-likelihood multiple choice, lm-evaluation-harness style
"""
