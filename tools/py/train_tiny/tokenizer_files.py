"""Build the CLIP BPE tokenizer folder (vocab.json, merges.txt, configs) from the
vocabulary that ships inside the open_clip_torch package, exactly the way CLIP's
SimpleTokenizer and transformers' CLIPTokenizer lay it out (49408 entries)."""

import gzip
import json
import os
import sys

NUM_MERGES = 49152 - 256 - 2  # 48894, as in CLIP's simple_tokenizer.py
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def default_bpe_path():
    # Locate the file without importing open_clip (its import pulls in torchvision).
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed: pass the path of bpe_simple_vocab_16e6.txt.gz")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges(bpe_path):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : NUM_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_folder(out_dir, bpe_path=None):
    """Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json
    (SD 1.x convention: pad with <|endoftext|> to 77 tokens)."""
    os.makedirs(out_dir, exist_ok=True)
    vocab, merges = build_vocab_and_merges(bpe_path or default_bpe_path())
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77,
                  do_lower_case=True, errors="replace", add_prefix_space=False,
                  clean_up_tokenization_spaces=True)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


if __name__ == "__main__":
    print(write_tokenizer_folder(sys.argv[1] if len(sys.argv) > 1 else "tokenizer"))
