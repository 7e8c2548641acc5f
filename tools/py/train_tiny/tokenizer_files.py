"""Build the CLIP BPE tokenizer folder (vocab.json, merges.txt, configs) from the
vocabulary that ships inside the open_clip_torch package, exactly the way CLIP's
SimpleTokenizer and transformers' CLIPTokenizer lay it out (49408 entries). The
work is tools/py/clip_vocab.py's, shared with the golden-model generator."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clip_vocab import write_tokenizer  # noqa: E402


def write_tokenizer_folder(out_dir):
    """SD 1.x convention: pads with <|endoftext|> to 77 tokens."""
    write_tokenizer(out_dir)
    return out_dir


if __name__ == "__main__":
    print(write_tokenizer_folder(sys.argv[1] if len(sys.argv) > 1 else "tokenizer"))
