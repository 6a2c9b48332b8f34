# Container-side, in a toolchain image: a throwaway venv with the cell's wheel (no vLLM there to
# share one with), then the oracle. Args: what oracle_run.py takes.
set -e
python -m venv /tmp/oracle-venv
/tmp/oracle-venv/bin/pip install -q --cache-dir /cache/pip --no-deps /wheels/kvlab_kvx-*.whl
/tmp/oracle-venv/bin/pip install -q --cache-dir /cache/pip numpy ml_dtypes
exec /tmp/oracle-venv/bin/python /deploylab/oracle_run.py "$@"
