"""The CLIP BPE vocabulary in the transformers tokenizer format.

OpenAI's CLIP vocabulary ships inside the open_clip_torch wheel as
bpe_simple_vocab_16e6.txt.gz (a list of merges). The token list is the 256
byte-level characters, the same with "</w>", one token per merge, then the two
special tokens: 49408 entries for the full list.
"""

import gzip
import json
import os


def bytes_to_unicode():
    """The byte-level alphabet: printable bytes map to themselves, the rest to 256+."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_merges():
    import importlib.util
    # Locate the package without importing it (its import pulls in torchvision).
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]


def write_tokenizer(folder, merges_limit=None, pad_token="<|endoftext|>"):
    """Writes vocab.json, merges.txt and the configs; returns the vocabulary size.

    merges_limit keeps only the first merges: a smaller but still valid CLIP-style
    BPE vocabulary for small test models.
    """
    merges = clip_merges()
    if merges_limit is not None:
        merges = merges[:merges_limit]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(special, model_max_length=77, do_lower_case=True,
                       tokenizer_class="CLIPTokenizer"), f, indent=2)
    return len(tokens)
