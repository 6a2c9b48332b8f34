"""Build the tiny random-weight Llama that the smoke tests serve (no model hub is reachable).

Runs inside the runtime image (it has torch, transformers and tokenizers):
    python make_model.py WORDS_FILE OUT_DIR [SIZE]     # SIZE: tiny (default), mid, small or bench
Deterministic: a byte-level BPE trained on a corpus generated from the word list with a fixed seed
(big enough a vocabulary that each listed word is one token), and weights from torch.manual_seed(0).
Only the standard library, torch, tokenizers and transformers are imported: this file is copied
into the container on its own.
"""

import json
import random
import sys
from pathlib import Path

VOCAB = 2048
CONTEXT = 4096
# Any role (user, assistant, tool) renders the same way; enough for chat completions and tool loops.
# tiny: head_dim 64 (a size vLLM's CPU attention supports); 2 layers keep a 3,000-token prefill cheap.
# mid (~2.6 M, a decode step 5-7 ms at one CPU, a 3,000-token prefill in hundreds of ms): the capacity
# search's model (tokens cost, and its points stay short). small (~14 M parameters, a decode step ~9 ms
# here) and bench (~94 M, ~33 ms), for `invoke bench replay`: steps long enough that vLLM's API server
# keeps pace with the engine on a 2-core box (with tiny, a step is ~2 ms, and an API server that falls
# behind hands out a request's tokens merged into one piece: notes/smoke.md, session 3).
SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2),
    "mid": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    "bench": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=4),
}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def main(words_file: str, out: str, size: str = "tiny") -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = [w for w in Path(words_file).read_text().split("\n") if w and not w.startswith("#")]
    rng = random.Random("deploylab-tiny-llama")
    corpus = [" ".join(rng.choice(words) for _ in range(64)) for _ in range(4000)] + [" ".join(words)] * 20

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|tool|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   model_max_length=CONTEXT)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, **SIZES[size], max_position_embeddings=CONTEXT,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False,
                      torch_dtype="float32")
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    sample = " ".join(words[:10])
    print(json.dumps({"vocab": len(fast), "sample_words": 10, "sample_tokens": len(fast(sample)["input_ids"])}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
