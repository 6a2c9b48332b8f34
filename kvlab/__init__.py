"""kvlab: a hybrid KV cache lab with vLLM's block semantics.

blocks.py (manager) → layouts/ (paged, virtual-contiguous, hybrid-prefix-shared, spans) →
reference.py (float64 truth) → oracle.py (every layout, every case, through a backend) ;
scenario.py turns cases.toml into real manager state; metadata.py sizes each layout's metadata;
ext.py adapts the compiled extension (csrc/) to the oracle's backend signature.
"""
