"""Build the held-out prompt set, heldout.json (seeded, deterministic).

100 prompts with their ground truth:
  45  one object, training phrasings, a named position (5 for each of the 9 positions)
  15  one object, phrasings never used in training, a named position
  10  one object, training phrasings, no position named (position not scored)
  15  two objects in a relation (left of / right of / above / below), 5 of them in
      held-out phrasings
  15  two objects with two named positions, 5 of them in a held-out phrasing

Every object's key (shape, colour, background, position) is written to
"excluded_keys"; data.py never generates a training scene containing one of
them (an object whose caption names no position sits in the centre, and the two
objects of a relation sit at the relation's anchors, e.g. left and right).

    python heldout.py            # rewrites heldout.json next to this file
"""

import json

import numpy as np

from data import (HELDOUT_PAIR_TEMPLATES, HELDOUT_PATH, HELDOUT_RELATION_TEMPLATES, HELDOUT_SINGLE_TEMPLATES,
                  PAIR_ANCHORS, PAIR_TEMPLATES, POSITION_PHRASES, RELATION_TEMPLATES, RELATIONS, SINGLE_TEMPLATES,
                  choice, object_phrase, sample_size, tidy)
from shapes import COLOURS, POSITIONS, SHAPES

SEED = 20261121


def _objects(rng, n):
    bg = choice(rng, COLOURS)
    others = [c for c in COLOURS if c != bg]
    colours = [others[i] for i in rng.choice(len(others), size=n, replace=False)]
    objs = [{"shape": choice(rng, SHAPES), "colour": c, "size": sample_size(rng)} for c in colours]
    phrases = [object_phrase(rng, o["colour"], o["shape"], o["size"]) for o in objs]
    return bg, objs, phrases


def build(seed=SEED):
    rng = np.random.default_rng(seed)
    prompts = []

    def add(prompt, phrasing, bg, objects, relation=None):
        prompts.append({"index": len(prompts), "prompt": tidy(prompt), "phrasing": phrasing, "background": bg,
                        "objects": objects, "relation": relation})

    anchors = list(POSITIONS)
    for i in range(45):
        pos = anchors[i % len(anchors)]
        bg, (o,), (op,) = _objects(rng, 1)
        text = choice(rng, SINGLE_TEMPLATES).format(o=op, p=choice(rng, POSITION_PHRASES[pos]), b=bg)
        add(text, "train", bg, [dict(o, position=pos, anchor=pos)])
    for i in range(15):
        pos = anchors[int(rng.integers(len(anchors)))]
        bg, (o,), (op,) = _objects(rng, 1)
        template = HELDOUT_SINGLE_TEMPLATES[i % len(HELDOUT_SINGLE_TEMPLATES)]
        add(template.format(o=op, p=choice(rng, POSITION_PHRASES[pos]), b=bg), "heldout", bg,
            [dict(o, position=pos, anchor=pos)])
    for i in range(10):
        bg, (o,), (op,) = _objects(rng, 1)
        add(choice(rng, SINGLE_TEMPLATES).format(o=op, p="", b=bg), "train", bg, [dict(o, position=None, anchor="centre")])
    relations = list(RELATIONS)
    for i in range(15):
        rel = relations[i % len(relations)]
        (anchor_a, anchor_b), words = RELATIONS[rel]
        bg, (a, b), (oa, ob) = _objects(rng, 2)
        heldout = i >= 10
        template = (HELDOUT_RELATION_TEMPLATES[i % len(HELDOUT_RELATION_TEMPLATES)] if heldout
                    else choice(rng, RELATION_TEMPLATES))
        add(template.format(oa=oa, ob=ob, rel=choice(rng, words), b=bg), "heldout" if heldout else "train", bg,
            [dict(a, position=None, anchor=anchor_a), dict(b, position=None, anchor=anchor_b)], relation=rel)
    for i in range(15):
        pa, pb = PAIR_ANCHORS[int(rng.integers(len(PAIR_ANCHORS)))]
        bg, (a, b), (oa, ob) = _objects(rng, 2)
        heldout = i >= 10
        template = HELDOUT_PAIR_TEMPLATES[0] if heldout else choice(rng, PAIR_TEMPLATES)
        text = template.format(oa=oa, ob=ob, b=bg, pa=choice(rng, POSITION_PHRASES[pa]),
                               pb=choice(rng, POSITION_PHRASES[pb]))
        add(text, "heldout" if heldout else "train", bg,
            [dict(a, position=pa, anchor=pa), dict(b, position=pb, anchor=pb)])

    keys = sorted({(o["shape"], o["colour"], p["background"], o["anchor"]) for p in prompts for o in p["objects"]})
    return {
        "description": "Held-out prompts of the kiln embedded model (tools/py/train_tiny/heldout.py, seed "
                       f"{seed}). Image i must be generated for prompts[i]. A null position is not scored; "
                       "'relation' R means objects[0] is R objects[1].",
        "prompts": prompts,
        "excluded_keys": [list(k) for k in keys],
    }


def main():
    data = build()
    with open(HELDOUT_PATH, "w") as f:
        json.dump(data, f, indent=1)
    n_heldout = sum(p["phrasing"] == "heldout" for p in data["prompts"])
    print(f"wrote {len(data['prompts'])} prompts ({n_heldout} in held-out phrasings), "
          f"{len(data['excluded_keys'])} excluded keys to {HELDOUT_PATH}")


if __name__ == "__main__":
    main()
