# Container-side, the build's requirements phase (images/build.py): the target's build requirements
# from the tree in /src ($1: cpu | cuda). torch's "+cpu" local pins live only on download.pytorch.org,
# so PyPI's release of the same version is installed instead: a CUDA build, which needs its CUDA
# runtime wheels just to import (measured: without them `import torch` fails on libcudart).
set -e
req=requirements/build/$1.txt
[ -f "$req" ] || req=requirements/build.txt
grep -v -E '^\s*torch([=<>; ]|$)' "$req" > /deps/build-reqs.txt
grep -E '^\s*torch([=<>; ]|$)' "$req" | sed -E 's/\+cpu//' > /deps/torch-reqs.txt || true
echo "build requirements from $req"; cat /deps/build-reqs.txt /deps/torch-reqs.txt
python -m pip install -r /deps/build-reqs.txt -r /deps/torch-reqs.txt
# A tree that pins no torch (tests/fixtures/tiny-engine) builds without it.
if [ -s /deps/torch-reqs.txt ]; then python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; fi
python -m pip list --format=freeze > /deps/pip-freeze.txt
