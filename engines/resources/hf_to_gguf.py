"""The project's test Llama (HF safetensors + a byte-level BPE tokenizer.json) -> one GGUF file.

Runs inside the llama.cpp engine image (python3-gguf, python3-safetensors, python3-numpy), copied
there on its own:  python3 hf_to_gguf.py MODEL_DIR OUT.gguf
llama.cpp's own converter does the same through torch and transformers (~190 Debian packages); this
one keeps to what the test model needs, with gguf-py writing the file: the tensor names come from
gguf's TensorNameMap, merges, special ids and the chat template from gguf's SpecialVocab, and Q/K
rows are permuted exactly as the converter's LlamaModel.permute does (HF's rotary layout -> GGML's).
The pre-tokenizer is named (`gpt-2`): the converter's hash table does not know this tokenizer.
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(model_dir: str, out: str) -> None:
    src = Path(model_dir)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        sys.exit(f"{src}/config.json: model_type: expected llama, got {cfg.get('model_type')!r}")
    tok = json.loads((src / "tokenizer.json").read_text())
    if tok["model"]["type"] != "BPE" or tok["decoder"]["type"] != "ByteLevel":
        sys.exit(f"{src}/tokenizer.json: expected a byte-level BPE tokenizer")
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    n_layer = cfg["num_hidden_layers"]

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("deploylab-tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Tokens in id order; the added special tokens are CONTROL (never produced from plain text).
    vocab = dict(tok["model"]["vocab"])
    special = {}
    for t in tok.get("added_tokens", ()):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special[t["id"]] = t["content"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        sys.exit(f"{src}/tokenizer.json: token ids are not 0..{len(by_id) - 1}")
    # The embedding has config.vocab_size rows, more than the tokenizer's tokens: the rest are padding
    # (as the converter names them), so every id the random weights may pick is a token.
    tokens = [t for t, _ in by_id] + [f"[PAD{i}]" for i in range(len(by_id), cfg["vocab_size"])]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in by_id]
    types += [gguf.TokenType.UNUSED] * (len(tokens) - len(by_id))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(src, load_merges=True).add_to_gguf(w)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    for name, data in sorted(load_file(str(src / "model.safetensors")).items()):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        data = data.astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"{src}/model.safetensors: tensor {name}: no GGUF name for it")
        w.add_tensor(new, data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(json.dumps({"out": out, "tokens": len(by_id), "padding": len(tokens) - len(by_id), "special": len(special),
                      "layers": n_layer}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
