# Sourced by the device-session scripts (gpu_session.sh, two_core_session.sh), from the
# repository root: install the carried .whl/ wheels (packages the GPU image lacks; the
# machine has no package index) into /tmp/site and put it and the repo on PYTHONPATH.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
