"""Errors that mean "the input is wrong", as opposed to a bug in jaxlm.

The command line turns these into `jaxlm: error: <message>` and exit status 2, so
every such message must name what is wrong and where (file:line, key or path).
"""


class InputError(ValueError):
    """Bad user input: a file, record, key or argument that cannot be used as given."""
