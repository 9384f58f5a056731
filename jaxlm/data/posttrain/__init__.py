"""Building blocks of the embedded post-training data (`jaxlm data posttrain`).

    functions.py    source file -> documented functions and methods (ast), with limits
    corruptions.py  a function -> a plausible wrong version (the rejected answer)
    prompts.py      a function -> the user's request, SFT and preference records
    output.py       records -> jsonl files, and the numbers manifest.json reports

jaxlm.data.stdlib_tasks ties them together over the standard-library corpus and
writes the jsonl files; read it first when making a data set of your own.
"""
