"""`jaxlm train ARGS...` in which the save of step 4 hangs, as on a hung filesystem.

Creating the step's directory blocks forever (the process prints "save is stuck"
first), wherever Orbax does it: in the main thread or in a background one.
"""

import os
import sys
import threading

_makedirs = os.makedirs


def _stuck_at_step_4(name, *args, **kwargs):
    if os.path.basename(os.fspath(name)).startswith("4.orbax-checkpoint-tmp"):
        print("save is stuck", flush=True)
        threading.Event().wait()
    return _makedirs(name, *args, **kwargs)


if __name__ == "__main__":
    os.makedirs = _stuck_at_step_4
    from jaxlm.cli import main

    sys.exit(main(sys.argv[1:]))
