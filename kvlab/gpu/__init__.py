"""GPU side of the KV lab, run on a lent GPU machine: the benchmark and oracle run (`run.sh` →
`python -m kvlab.gpu.bench`), sweeps, ncu probes, and CUDA VMM for the virtual-contiguous layout."""
