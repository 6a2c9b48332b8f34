# Container-side, the build's wheel phase (images/build.py): the engine's wheel from /src into /out.
# DEPLOYLAB_PRE holds the commands a fix from fixes.toml adds (e.g. pip install a newer cmake); they
# run first, before `set -e`, as they did when prefixed to the script.
if [ -n "${DEPLOYLAB_PRE:-}" ]; then eval "$DEPLOYLAB_PRE"; fi
set -e
rm -f /out/vllm-*.whl
python -m pip wheel --no-build-isolation --no-deps -v . -w /out
ls -la /out
