"""Score images generated for the held-out prompts (heldout.json) with the
analyser (analyse.py). Image i must be the one generated for prompts[i] and be
named by --pattern (default "{index:03d}.png").

Definitions (per prompt; each accuracy is the fraction of prompts that pass):
  An object named in a prompt is *matched* to the detected object of the same
  colour (colours within a prompt are distinct); if several detected objects
  have that colour, the one of the named shape wins, then the largest.
  colour    the detected background colour is the named one AND every named
            object is matched (a detected object of its colour exists).
  shape     every named object is matched and its match has the named shape.
  position  (only prompts that name a position or a relation; the others are
            left out of this accuracy) every named position holds for the
            matched object: an absolute position ("at the top left") holds when
            the nearest of the nine anchors to the object's centroid is the named
            one (3x3 grid with boundaries at 3/8 and 5/8 of the side); a relation
            "A left of / right of / above / below B" holds when both are matched and
            A's centroid is at least 1/8 of the side left of / right of / above /
            below B's. An unmatched object fails.
Also reported, not part of the bar: count (exactly as many objects detected as
named) and the same accuracies split by training / held-out phrasings.

    python evaluate.py --images DIR [--heldout heldout.json] [--json scores.json]
"""

import argparse
import json
import os

from analyse import analyse_file

HERE = os.path.dirname(os.path.abspath(__file__))
RELATION_MARGIN = 0.125


def match(named, detected):
    same = [d for d in detected if d["colour"] == named["colour"]]
    if not same:
        return None
    return max(same, key=lambda d: (d["shape"] == named["shape"], d["area"]))


def relation_holds(relation, a, b):
    m = RELATION_MARGIN
    return {"left of": a["x"] + m <= b["x"], "right of": a["x"] >= b["x"] + m,
            "above": a["y"] + m <= b["y"], "below": a["y"] >= b["y"] + m}[relation]


def score_prompt(truth, analysis):
    """Scores one prompt: {"colour": bool, "shape": bool, "position": bool or None, "count": bool}."""
    matches = [match(o, analysis["objects"]) for o in truth["objects"]]
    colour = analysis["background"] == truth["background"] and all(m is not None for m in matches)
    shape = all(m is not None and m["shape"] == o["shape"] for o, m in zip(truth["objects"], matches))
    checks = [m is not None and m["position"] == o["position"]
              for o, m in zip(truth["objects"], matches) if o["position"] is not None]
    if truth.get("relation"):
        a, b = matches
        checks.append(a is not None and b is not None and relation_holds(truth["relation"], a, b))
    return {"colour": colour, "shape": shape, "position": all(checks) if checks else None,
            "count": len(analysis["objects"]) == len(truth["objects"])}


def summarise(rows):
    out = {}
    for key in ("colour", "shape", "position", "count"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = round(sum(vals) / len(vals), 4) if vals else None
        out[key + "_n"] = len(vals)
    return out


def evaluate(images_dir, heldout_path=os.path.join(HERE, "heldout.json"), pattern="{index:03d}.png"):
    with open(heldout_path) as f:
        prompts = json.load(f)["prompts"]
    rows = []
    for p in prompts:
        analysis = analyse_file(os.path.join(images_dir, pattern.format(index=p["index"])))
        rows.append(dict(index=p["index"], phrasing=p["phrasing"], prompt=p["prompt"], analysis=analysis,
                         **score_prompt(p, analysis)))
    result = {"all": summarise(rows)}
    for phrasing in ("train", "heldout"):
        result[phrasing + "_phrasings"] = summarise([r for r in rows if r["phrasing"] == phrasing])
    result["failures"] = [{k: r[k] for k in ("index", "prompt", "colour", "shape", "position", "analysis")}
                          for r in rows if not (r["colour"] and r["shape"] and r["position"] is not False)]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--heldout", default=os.path.join(HERE, "heldout.json"))
    ap.add_argument("--pattern", default="{index:03d}.png")
    ap.add_argument("--json", help="write the full result (with every failure's analysis) here")
    args = ap.parse_args()
    result = evaluate(args.images, args.heldout, args.pattern)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for name in ("all", "train_phrasings", "heldout_phrasings"):
        s = result[name]
        print(f"{name:18s} colour {fmt(s['colour'])} (n={s['colour_n']})  shape {fmt(s['shape'])}  "
              f"position {fmt(s['position'])} (n={s['position_n']})  count {fmt(s['count'])}")
    for f in result["failures"][:20]:
        objs = ", ".join(f"{o['colour']} {o['shape']} @{o['position']}" for o in f["analysis"]["objects"])
        print(f"  fail {f['index']:3d} c={int(f['colour'])} s={int(f['shape'])} p={f['position']}: {f['prompt']!r}"
              f" -> {f['analysis']['background']} bg; {objs}")


if __name__ == "__main__":
    main()
