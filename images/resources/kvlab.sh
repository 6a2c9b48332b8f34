# Container-side, the build's kvlab phase (images/build.py): the kvlab extension's wheel from /kvlab.
set -e
rm -f /out/kvlab*.whl
python -m pip wheel --no-deps -v /kvlab -w /out
ls -la /out
