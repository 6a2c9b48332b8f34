# Container-side, the build's kvlab phase (images/build.py): the kvlab extension's wheel from /kvlab.
set -e
# MAX_JOBS compile jobs, as the engine's build (ninja's default, cores + 2, thrashed under a memory limit)
export CMAKE_BUILD_PARALLEL_LEVEL="${MAX_JOBS:-1}"
rm -f /out/kvlab*.whl
python -m pip wheel --no-deps -v /kvlab -w /out
ls -la /out
