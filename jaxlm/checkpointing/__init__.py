"""Checkpointing: what a run saves and how it comes back.

    manager.py       Orbax checkpoints of the train state, data position, config, checksums
    integrity.py     content checksums that tell a good checkpoint from a damaged one
    shapes.py        does a checkpoint fit the model? (from metadata, before reading arrays)
    params_io.py     parameters without optimizer state: params directories, exports, init_from
    resume_rules.py  which config changes a resume may make

May import: the root modules, models (to build the abstract model a checkpoint restores
into) and data (the tokenizer a params directory carries). Not training, inference or
anything above them: training, inference, evaluation and the commands call into here.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
