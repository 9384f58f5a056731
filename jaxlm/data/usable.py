"""A bound on how long an endless stream may look for something to train on.

Stages that turn records into examples return None for a record with nothing to
learn (a conversation without an assistant turn, a pair truncated away, a blank
document, a line skipped as malformed), and Grain drops those. If *every* record of
a repeating source is like that, the stream looks for its next example forever: a
busy loop that never yields a batch, so the trainer never gets back to the point
where it notices SIGTERM. `RequireUsable` wraps such a stage and counts the None
results in a row; after an epoch's worth it checks the source once, in file order,
for a usable record, and raises InputError when there is none. The happy path pays
one integer update per record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxlm.errors import InputError


class RequireUsable:
    """Stage: `stage(item)`, raising InputError(`message`) when nothing is usable.

    `patience`: the records in a row that may give None before `has_usable()` is
    asked (an epoch of this process's stream). With several reader threads the
    count is approximate (an unlocked update), which can only delay the check.
    """

    def __init__(
        self,
        stage: Callable[[Any], Any],
        *,
        patience: int,
        has_usable: Callable[[], bool],
        message: str,
    ):
        self.stage, self.has_usable, self.message = stage, has_usable, message
        self.patience = max(1, patience)
        self._in_a_row = 0

    def __call__(self, item: Any) -> Any:
        result = self.stage(item)
        if result is not None:
            self._in_a_row = 0
            return result
        self._in_a_row += 1
        if self._in_a_row >= self.patience:
            self._in_a_row = 0
            if not self.has_usable():
                raise InputError(self.message)
        return None


def any_usable(records, stage: Callable[[Any], Any]) -> bool:
    """Whether `stage` gives anything for one of `records` (indexable), in order."""
    return any(stage(records[i]) is not None for i in range(len(records)))
