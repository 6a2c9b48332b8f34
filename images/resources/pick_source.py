"""Runs inside build containers (mounted at /deploylab): print a source package's versions known to
apt, nearest first to the version the engine asks for (major/minor distance, then newest)."""

import re
import subprocess
import sys


def nums(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v.split(":")[-1])[:3]] + [0, 0, 0]


def main(pkg: str, asked: str) -> None:
    out = subprocess.run(["apt-cache", "showsrc", pkg], capture_output=True, text=True).stdout
    versions = sorted(set(re.findall(r"^Version: (\S+)", out, re.M)))
    want = nums(asked.lstrip("v")) if re.match(r"v?\d", asked) else [999, 0, 0]
    for v in sorted(versions, key=lambda v: ([abs(a - b) for a, b in zip(nums(v)[:2], want[:2])],
                                            [-x for x in nums(v)])):
        print(v)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
