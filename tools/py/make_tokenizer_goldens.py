#!/usr/bin/env python3
"""Makes the CLIP tokenizer goldens under tests/data: tokenizer folders built from the real CLIP
vocabulary, and the ids transformers' CLIPTokenizer gives for a set of prompts.

    /work/pyenv/bin/python tools/py/make_tokenizer_goldens.py

Writes
  tests/data/clip_tokenizer/          vocab.json, merges.txt and configs laid out like SD 1.5's
                                      tokenizer (pads with <|endoftext|>); cases.json (the ids);
                                      unicode_cases.json (what the tokenizers library does
                                      with single code points and short strings)
  tests/data/clip_tokenizer_json/     tokenizer.json + tokenizer_config.json as transformers
                                      saves them, padding with "!" like SDXL's tokenizer_2
  tests/data/clip_tokenizer_sd2/      configs only (the test adds vocab.json and merges.txt):
                                      special_tokens_map.json overrides the config's pad token
                                      with "!", as in SD 2.x folders
  tests/data/clip_tokenizer_decoder/  configs only: tokenizer_config.json with
                                      added_tokens_decoder (transformers >= 4.34 layout), whose
                                      token options outrank special_tokens_map.json

The vocabulary comes from open_clip's copy of OpenAI's bpe_simple_vocab_16e6.txt.gz, turned
into vocab.json + merges.txt the way CLIP and transformers do (clip_vocab.py).
"""

import importlib.metadata
import json
import platform
import random
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import tokenizers
import transformers
from tokenizers import Regex, normalizers
from transformers import CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_vocab import bytes_to_unicode, clip_merges  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
MAX_LENGTH = 77
SEED = 20240613
NUM_RANDOM_PROMPTS = 300


def clip_vocab_and_merges():
    merges = [" ".join(merge) for merge in clip_merges()]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408 and len(set(tokens)) == len(tokens)
    return {token: i for i, token in enumerate(tokens)}, merges


def added_token(content, normalized=True, **extra):
    return dict(content=content, lstrip=False, normalized=normalized, rstrip=False, single_word=False, **extra)


def sd_tokenizer_config(pad_token):
    """tokenizer_config.json as in the SD 1.x / 2.x diffusers folders."""
    typed = lambda content: {"__type": "AddedToken", **added_token(content)}
    return {
        "add_prefix_space": False,
        "bos_token": typed("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": typed("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": typed("<|endoftext|>"),
    }


def sd_special_tokens_map(pad_token):
    return {
        "bos_token": added_token("<|startoftext|>"),
        "eos_token": added_token("<|endoftext|>"),
        "pad_token": pad_token,
        "unk_token": added_token("<|endoftext|>"),
    }


def write_json(path, value):
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_folders():
    """Writes the tokenizer folders; returns {name: (folder, folder holding vocab/merges)}."""
    vocab, merges = clip_vocab_and_merges()
    sd15 = DATA / "clip_tokenizer"
    sd15.mkdir(parents=True, exist_ok=True)
    (sd15 / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (sd15 / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    write_json(sd15 / "tokenizer_config.json", sd_tokenizer_config("<|endoftext|>"))
    write_json(sd15 / "special_tokens_map.json", sd_special_tokens_map("<|endoftext|>"))

    sd2 = DATA / "clip_tokenizer_sd2"
    sd2.mkdir(exist_ok=True)
    write_json(sd2 / "tokenizer_config.json", sd_tokenizer_config("<|endoftext|>"))
    write_json(sd2 / "special_tokens_map.json", sd_special_tokens_map("!"))

    # Options unlike the SD 1.5 folder's, so that a loader ignoring added_tokens_decoder, or
    # reading special_tokens_map.json beside it, gives other ids.
    decoder = DATA / "clip_tokenizer_decoder"
    decoder.mkdir(exist_ok=True)
    write_json(
        decoder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {
                "49406": added_token("<|startoftext|>", normalized=False, special=True),
                "49407": added_token("<|endoftext|>", normalized=True, special=True),
            },
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "model_max_length": MAX_LENGTH,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": "<|endoftext|>",
        },
    )
    write_json(decoder / "special_tokens_map.json", sd_special_tokens_map("!"))

    as_json = DATA / "clip_tokenizer_json"
    shutil.rmtree(as_json, ignore_errors=True)
    CLIPTokenizer.from_pretrained(sd15, pad_token="!").save_pretrained(as_json)
    leftover = sorted(p.name for p in as_json.iterdir())
    assert leftover == ["tokenizer.json", "tokenizer_config.json"], leftover

    return {
        "clip_tokenizer": (sd15, None),
        "clip_tokenizer_json": (as_json, None),
        "clip_tokenizer_sd2": (sd2, sd15),
        "clip_tokenizer_decoder": (decoder, sd15),
    }


HAND_WRITTEN_PROMPTS = [
    "",
    " ",
    "   \t\n  ",
    "a photo of a cat",
    "A photo of a cat",
    "a photograph of an astronaut riding a horse",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "(masterpiece:1.2), (best quality:1.3), ultra-detailed, 8k, RAW photo",
    "((dramatic lighting)), [blurry], {cinematic}, <lora:detail:0.8>",
    "portrait of a woman, (freckles:0.7), highly detailed, sharp focus, trending on artstation",
    "a red apple on a wooden table, studio lighting, 35mm, f/1.8, bokeh",
    "cyberpunk city at night, neon lights, rain, reflections, by greg rutkowski and alphonse mucha",
    "low quality, worst quality, bad anatomy, extra fingers, watermark, text, signature",
    "an oil painting of a lighthouse in a storm, impasto, van gogh style",
    "isometric 3d render of a tiny cozy room, pastel colors, octane render, unreal engine 5",
    "photo of a corgi wearing sunglasses on the beach, golden hour",
    "a   cat\t\tand\n\na dog",
    "tabs\tand\nnewlines\r\nand\r carriage returns",
    "  leading and trailing spaces  ",
    "ALL CAPS PROMPT OF A DRAGON",
    "MiXeD CaSe WoRdS",
    "1024x768 wallpaper, 4k, 16:9, 1920x1080",
    "pi is 3.14159, e is 2.71828",
    "version 2.0.1 (build 1234567890)",
    "-42 +17 100% 0.5x 1e-5 #ff00ff $19.99",
    "it's a dog's life, isn't it? we'll see, don't worry",
    "I'M HERE, YOU'RE THERE, THEY'VE GONE, SHE'LL COME, HE'D KNOW",
    "I'm I've I'd I'll you're we've",
    "'s 't 're 've 'm 'll 'd",
    "''s '''t 'sa 'tis rock'n'roll o'clock",
    "the cats' toys, the 'quoted' word, trailing'",
    "`backtick` ‘curly’ “double” „low” ’s",
    "wow!!! really??? ok... -- --- ~~~ ***",
    "!!!",
    "!",
    "hello!",
    "a!b!c",
    "...",
    "--",
    "?!?!",
    "a.b.c d,e,f g;h:i",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "C:\\path\\to\\file.png /usr/bin/env",
    "[x] {y} (z) <w> |v| ^u^ _t_ =s= +r+",
    "emoji 😀😃😄 and 🎉🎊",
    "family 👨‍👩‍👧‍👦 and flags 🇺🇸🇯🇵 and 🏳️‍🌈",
    "skin tones 👍🏻👍🏼👍🏽👍🏾👍🏿",
    "heart ❤️ vs ❤ and ☺️",
    "café naïve résumé façade coöperate",
    "Über straße Ökonomie größe",
    "ß ẞ SS",
    "İstanbul ISTANBUL istanbul ı",
    "Ⅻ ⅻ Ⅳ ⅳ",
    "x² + y³ = z¹ and H₂O",
    "½ ¼ ¾ ⅓",
    "ΑΒΓΔ αβγδ ΟΔΟΣ Σίσυφος",
    "Москва Привет мир ЁЖИК",
    "Ελληνικά, Русский, Українська, Български",
    "日本語のテキスト、カタカナとひらがな。",
    "中文提示词：一只可爱的猫，高清，细节丰富",
    "한국어 프롬프트, 아름다운 풍경",
    "ㄱㅏㅂ 한글 자모 각",
    "العربية: قطة جميلة ١٢٣",
    "עברית: חתול יפה",
    "हिन्दी: सुंदर बिल्ली",
    "ไทย: แมวน่ารัก",
    "e\u0301 vs \u00e9",
    "cafe\u0301 and nai\u0308ve",
    "a\u0301\u0302\u0303 stacked marks",
    "o\u0323\u0302 reordered q\u0307\u0323",
    "\u1100\u1161\u11a8 conjoining jamo",
    "\u212b angstrom \u2126 ohm \u212a kelvin",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ！？",
    "non\u00a0breaking\u00a0space",
    "zero\u200bwidth\u200bspace",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space and\u2028line\u2029separators",
    "next\u0085line and \u001cfile sep\u001f",
    "soft\u00adhyphen and word\u2060joiner",
    "variation\ufe0fselector and bom\ufeff",
    "ﬁ ﬂ ligatures and ſ long s",
    "𝐁𝐨𝐥𝐝 𝑰𝒕𝒂𝒍𝒊𝒄 𝔉𝔯𝔞𝔨𝔱𝔲𝔯",
    "\U0001d7ce\U0001d7cf mathematical digits",
    "Ꙁ Ᲊᲊ new lowercase \u1c89\u1c8a \ua7cb \U00010d50",
    "\U00011935\U00011930 dives akuru",
    "\u0915\u093c vs \u0958",
    "\u0c3c telugu nukta after \u0c15\u0c3c\u0c4d",
    "<|startoftext|>",
    "<|endoftext|>",
    "a photo<|endoftext|>of a cat",
    "a photo <|endoftext|> of a cat",
    "<|endoftext|><|endoftext|>",
    "<|startoftext|>a cat<|endoftext|>",
    "<|ENDOFTEXT|> and <|STARTOFTEXT|>",
    "<|EndOfText|>",
    "!!<|endoftext|>!!",
    "<|endoftext|>!!",
    "<|endoftext|>'s",
    "<|endoftext|>123",
    "<|endoftext",
    "endoftext|>",
    "<| endoftext |>",
    "<|endoftext|>>",
    "<<|endoftext|>",
    "hi!!! <|endoftext|>!",
    "ok!?",
    "tab\t<|endoftext|>\tnewline\n<|startoftext|>\n",
    "a \u00a0<|endoftext|>\u3000b",
    "<|endoftext|>\u0301",
    "e<|startoftext|>\u0301",
    "<|startoftext|><|endoftext|>!",
    "x<|startoftext|>y",
    "< | >",
    "<|",
    "|>",
    "hello world! " * 40,
    ", ".join(f"tag{i}" for i in range(60)),
    "a " * 74,
    "a " * 75,
    "a " * 76,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "the the the the the",
    "0123456789",
    "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
    "٠١٢٣٤٥٦٧٨٩ ০১২৩ ๐๑๒",
    "①②③ ⑴⑵⑶ ⒈⒉⒊",
    "tab\there",
    "newline\nhere",
    "under_score and camelCase and kebab-case and snake_case_word",
    "hashtags #sunset #nofilter @user",
    "price: €100, £50, ¥1000, ₹500, ₿0.1",
    "temperature 25°C, 77°F, angle 90°",
    "©2024 ®™ §1 ¶2 †‡ •◦",
    "→ ← ↑ ↓ ⇒ ∞ ≈ ≠ ≤ ≥ √ ∑ ∏ ∫",
    "★☆✦✧ ♠♣♥♦ ♪♫",
    "quote \"double\" and 'single'",
    "semi;colon:colon",
    "a/b\\c|d",
    "(((((nested)))))",
    "[[[[weighted]]]]",
    "{{{{curly}}}}",
    "(red:1.5) (blue:0.5) (green)",
    "BREAK AND break",
    "score_9, score_8_up, score_7_up, source_anime",
    "a photo of a cat, by (artist name:1.1), [[[low res]]], <embedding:neg>",
    "Ǆ ǅ ǆ titlecase digraph",
    "ǰ ΐ ΰ և ŉ",
    "Ａ–Ｚ and ａ–ｚ",
]


def random_prompts(rng, count, taken):
    """Strings mixing scripts, spaces, marks, emoji and fragments of special tokens."""
    pools = [
        [chr(c) for c in range(0x20, 0x7F)],
        list("      \t\n\r"),
        ["\u00a0", "\u2003", "\u3000", "\u200b", "\u0085", "\u2028", "\u001c", "\u180e", "\ufeff"],
        [chr(c) for c in range(0xC0, 0x250)],
        [chr(c) for c in range(0x300, 0x370)] + ["\u1df6", "\u0c3c", "\u1abf", "\u3099", "\u309a"],
        [chr(c) for c in range(0x370, 0x400)] + ["Σ", "ς", "ΐ"],
        [chr(c) for c in range(0x400, 0x530)],
        [chr(c) for c in range(0x5D0, 0x5EB)] + [chr(c) for c in range(0x620, 0x66A)],
        [chr(c) for c in range(0x900, 0x980)],
        [chr(c) for c in range(0xE00, 0xE5C)],
        [chr(c) for c in range(0x1100, 0x1200)],
        [chr(c) for c in range(0x3040, 0x3100)],
        [chr(c) for c in range(0x4E00, 0x4E80)],
        [chr(c) for c in range(0xAC00, 0xAC80)],
        [chr(c) for c in range(0xF900, 0xF920)] + ["\u212b", "\u2126", "\u212a", "\u0344"],
        [chr(c) for c in range(0xFF01, 0xFF5F)],
        [chr(c) for c in range(0x2150, 0x2190)] + list("²³¹⁰⁴⁵₀₁₂①②③"),
        [chr(c) for c in range(0x1F600, 0x1F650)] + ["👨‍👩‍👧", "👍🏽", "❤️", "🇯🇵", "\u200d", "\U0001f3fb"],
        [chr(c) for c in range(0x1D400, 0x1D440)] + [chr(c) for c in range(0x1D7CE, 0x1D7E0)],
        ["\u1c89", "\u1c8a", "\ua7cb", "\ua7dc", "\U00010d50", "\U00016ea0", "\U00011935\U00011930"],
        ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "’"],
        ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|StartOfText|>", "<|", "|>", "!"],
        [chr(c) for c in range(0x2000, 0x2070)],
    ]
    prompts = []
    while len(prompts) < count:
        length = rng.choice([rng.randint(1, 8), rng.randint(1, 40), rng.randint(40, 120)])
        chosen = rng.sample(pools, rng.randint(1, 4))
        prompt = "".join(rng.choice(rng.choice(chosen)) for _ in range(length))
        if prompt not in taken:
            taken.add(prompt)
            prompts.append(prompt)
    return prompts


def assemble(folder, vocab_from, scratch):
    """The folder transformers should load: `folder`, plus vocab/merges where it has none."""
    if vocab_from is None:
        return folder
    target = Path(scratch) / folder.name
    shutil.copytree(folder, target)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_from / name, target / name)
    return target


def unicode_cases(rng):
    """What the tokenizers library does to single code points and short strings, for kiln's
    Unicode functions: the classes its regexes see, its Lowercase and its NFC."""
    remove = {
        name: normalizers.Replace(Regex(pattern), "")
        for name, pattern in (("letter", r"\p{L}"), ("number", r"\p{N}"), ("space", r"\s"))
    }
    lower = normalizers.Lowercase().normalize_str
    nfc = normalizers.NFC().normalize_str
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]

    def classes(cp):
        return "".join(name[0] for name, r in remove.items() if r.normalize_str(chr(cp)) == "")

    # Where a class or the lowercase mapping changes, plus a random sample.
    picked = set(rng.sample(code_points, 3000))
    previous = None
    for cp in code_points:
        state = (classes(cp), lower(chr(cp)) != chr(cp))
        if state != previous:
            picked.update({cp - 1, cp})
        previous = state
    picked = sorted(cp for cp in picked if 0 <= cp and not 0xD800 <= cp <= 0xDFFF)

    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0334", "\u0323", "\u1df6", "\u0c3c", "\u3099"]
    bases = list("aeiouAEOUnNcCsSzZ") + ["\u0915", "\u1100", "\u1161", "\u11a8", "\uac00", "\u3046", "\u0391"]
    nfc_inputs = ["".join(rng.choice(rng.choice([bases, marks])) for _ in range(rng.randint(1, 6))) for _ in range(400)]
    nfc_inputs += [chr(cp) for cp in range(0xF900, 0xFB50)] + ["\U00011935\U00011930", "\U00011938"]
    return {
        "code_points": [[cp, classes(cp), [ord(c) for c in lower(chr(cp))]] for cp in picked],
        "nfc": [[[ord(c) for c in s], [ord(c) for c in nfc(s)]] for s in nfc_inputs],
    }


def main():
    rng = random.Random(SEED)
    folders = make_folders()
    assert len(set(HAND_WRITTEN_PROMPTS)) == len(HAND_WRITTEN_PROMPTS), "duplicate prompts"
    prompts = HAND_WRITTEN_PROMPTS + random_prompts(rng, NUM_RANDOM_PROMPTS, set(HAND_WRITTEN_PROMPTS))

    summary, cases = {}, [{"prompt": p, "ids": {}, "input_ids": {}} for p in prompts]
    with tempfile.TemporaryDirectory() as scratch:
        for name, (folder, vocab_from) in folders.items():
            tokenizer = CLIPTokenizer.from_pretrained(assemble(folder, vocab_from, scratch))
            assert tokenizer.model_max_length == MAX_LENGTH
            summary[name] = {
                "folder": folder.name,
                "vocab_from": vocab_from.name if vocab_from else None,
                "bos_id": tokenizer.bos_token_id,
                "eos_id": tokenizer.eos_token_id,
                "pad_id": tokenizer.pad_token_id,
                "max_length": tokenizer.model_max_length,
                "vocab_size": len(tokenizer),
            }
            for case in cases:
                prompt = case["prompt"]
                case["ids"][name] = tokenizer(prompt, add_special_tokens=False).input_ids
                padded = tokenizer(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True)
                case["input_ids"][name] = padded.input_ids

    versions = {
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "open_clip_torch": importlib.metadata.version("open_clip_torch"),
        "unicodedata": unicodedata.unidata_version,
    }
    out = DATA / "clip_tokenizer"
    header = {
        "generator": "tools/py/make_tokenizer_goldens.py",
        "versions": versions,
        "how": "ids: CLIPTokenizer.from_pretrained(folder)(prompt, add_special_tokens=False).input_ids;"
        f" input_ids: the same with padding='max_length', max_length={MAX_LENGTH}, truncation=True",
        "tokenizers": summary,
    }
    # One case per line: the file stays diffable.
    lines = [json.dumps(header, ensure_ascii=True)[:-1] + ', "cases": [']
    lines += [json.dumps(case, ensure_ascii=True, separators=(",", ":")) + "," for case in cases]
    lines[-1] = lines[-1][:-1]
    lines.append("]}")
    (out / "cases.json").write_text("\n".join(lines) + "\n")

    unicode = {"generator": "tools/py/make_tokenizer_goldens.py", "versions": versions, **unicode_cases(rng)}
    (out / "unicode_cases.json").write_text(json.dumps(unicode, separators=(",", ":")) + "\n")
    print(f"{len(cases)} prompts x {len(summary)} tokenizers", file=sys.stderr)


if __name__ == "__main__":
    main()
