"""Errors that are not bugs in jaxlm: the input is wrong (InputError), the run's files
cannot be written (StorageError), or training stopped itself (RunStoppedError).

The command line turns each into one `jaxlm: error: <message>` line and an exit status
(2, 74 and 3; see jaxlm.cli), so every such message must name what is wrong and
where (file:line, key, path or step).
"""


class InputError(ValueError):
    """Bad user input: a file, record, key or argument that cannot be used as given."""


class StorageError(OSError):
    """A file the run must write cannot be written (a full disk, a read-only directory).

    An OSError whose message names the path and the OS error it comes from. The
    command line prints it as one `jaxlm: error:` line and exits with status 74.
    """


class RunStoppedError(RuntimeError):
    """The run stopped itself because training cannot usefully go on (a non-finite
    loss, a run of loss spikes): not a bug, and not the input's fault alone.

    The message may hold a `{saved}` placeholder, filled in once the save in flight
    has finished with the checkpoint a resumed run would start from; until then it
    reads "no checkpoint yet".
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.saved = "no checkpoint yet"

    def __str__(self) -> str:
        return self.args[0].replace("{saved}", self.saved)
