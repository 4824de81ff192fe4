"""Print the look measures of the real test photos and their transforms (the tables in docs/look.md).

    python benchmarks/look_table.py [--scale-to 256] [--transforms original,half,double] [--no-statements]

First table: each photo in tests/data/faces through each transform of tests/fixtures_look.py;
columns: the six measures and the face size in the source. Then the statements that
compare_look makes for a few "runs" against the references obama.jpg + obama2.jpg.
Deterministic: same numbers on every run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_look import BOXES, REFERENCES, TRANSFORMS, transformed  # noqa: E402

from charkit.look import MEASURES, compare_look, measure_look, reference_look  # noqa: E402

#: the rows of the docs table, in order
TABLE_TRANSFORMS = ("original", "blur", "dark", "desaturate", "grain", "jpeg10", "jpeg90", "shift3", "half", "double")
#: printed precision per measure (the statements use the same)
FORMATS = {
    "smoothness": ".3f",
    "sharpness": ".2f",
    "noise": ".2f",
    "saturation": ".2f",
    "brightness": ".3f",
    "contrast": ".3f",
}


def rows(scale_to: int = 256, transforms=TABLE_TRANSFORMS) -> list[tuple[str, str, dict[str, float], int]]:
    """(photo, transform, measures, face_px) for every photo and transform."""
    out = []
    for name in BOXES:
        for t in transforms:
            m = measure_look(*transformed(name, t), scale_to=scale_to)
            out.append((name, t, m.values(), m.face_px))
    return out


def render(scale_to: int = 256, transforms=TABLE_TRANSFORMS) -> str:
    """The markdown table."""
    head = ["photo", "transform", *MEASURES, "face_px"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t, values, face_px in rows(scale_to, transforms):
        cells = [name, t, *(f"{values[k]:{FORMATS[k]}}" for k in MEASURES), str(face_px)]
        lines.append("| " + " | ".join(cells) + " |")
    legend = "; ".join(f"`{t}`: {TRANSFORMS[t][0]}" for t in transforms)
    return "\n".join(lines) + f"\n\nscale_to={scale_to}. Transforms: {legend}.\n"


#: (run label, [(photo, transform), ...]) compared with the references in the statements section
RUNS = [
    ("obama3.jpg, held out (same person, another photo)", [("obama3.jpg", "original")]),
    ("biden.jpg (another person, same kind of photo)", [("biden.jpg", "original")]),
    ("all four photos blurred", [(n, "blur") for n in BOXES]),
    ("all four photos darkened x 0.5", [(n, "dark") for n in BOXES]),
    ("all four photos with grain", [(n, "grain") for n in BOXES]),
    ("all four photos at JPEG q10", [(n, "jpeg10") for n in BOXES]),
]


def statements(scale_to: int = 256) -> str:
    """compare_look's statements for each of RUNS against the references, as markdown."""
    baseline = reference_look([measure_look(*transformed(r, "original"), scale_to=scale_to) for r in REFERENCES])
    out = []
    for label, items in RUNS:
        run = [measure_look(*transformed(n, t), scale_to=scale_to) for n, t in items]
        out.append(f"**{label}**\n")
        out.extend(f"- {s}" for s in compare_look(run, baseline, name=label).statements)
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale-to", type=int, default=256)
    ap.add_argument(
        "--transforms", default=",".join(TABLE_TRANSFORMS), help="comma-separated, from tests/fixtures_look.py"
    )
    ap.add_argument("--no-statements", action="store_true", help="print the table only")
    args = ap.parse_args()
    print(render(args.scale_to, tuple(args.transforms.split(","))), end="")
    if not args.no_statements:
        print()
        print(statements(args.scale_to), end="")


if __name__ == "__main__":
    main()
