"""Calibration: genuine vs impostor similarities of the two offline backends (dlib, sface) on real photos.

    python benchmarks/calibrate_sface.py [--backends dlib,sface]

Prints, per backend: the genuine-pair minimum, the impostor-pair maximum, the AUC and d'
(pairs below), the errors at the backend's threshold (FRR: genuine pairs below it, FAR: impostor
pairs at or above it), the middle of the gap (``charkit calibrate``'s suggestion), the equal-z cut (as many genuine standard deviations
below the genuine mean as impostor ones above the impostor mean) and both means; then each probe
against the reference centroid (what ``charkit verify`` does), harder copies included, and how
often dlib and sface agree.

Genuine pairs: two Obama images from different photos (obama.jpg, obama2.jpg, obama3.jpg and five
degraded copies of the held-out obama3.jpg). Impostor pairs: an Obama image against one of nine other
people, or two of those people (biden.jpg, six faces of insightface's t1.jpg, its Tom Hanks image,
scikit-image's astronaut). The images are built by tests/face_sets.py; docs/identity.md quotes this
script's output.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from face_sets import Probe, genuine_probes, hard_probes, impostor_probes, pairs, reference_probes  # noqa: E402

from charkit.identity.calibrate import suggest_threshold  # noqa: E402


def embed_all(backend, probes: list[Probe]) -> dict[str, np.ndarray | str]:
    """probe name -> embedding, or the reason there is none (missed, too small)."""
    out: dict[str, np.ndarray | str] = {}
    for p in probes:
        face = p.pick(backend.analyze(p.image))
        if face is None:
            out[p.name] = "not detected"
        elif face.embedding is None:
            out[p.name] = face.reason or "not embedded"
        else:
            out[p.name] = face.embedding
    return out


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(genuine score > impostor score), ties counted half (Mann-Whitney U / n_g n_i)."""
    g, i = genuine[:, None], impostor[None, :]
    return float(((g > i).sum() + 0.5 * (g == i).sum()) / (len(genuine) * len(impostor)))


def d_prime(genuine: np.ndarray, impostor: np.ndarray) -> float:
    return float((genuine.mean() - impostor.mean()) / np.sqrt((genuine.var() + impostor.var()) / 2))


def equal_z(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The cut as many genuine standard deviations below the genuine mean as impostor ones above theirs."""
    sg, si = genuine.std(), impostor.std()
    return float((impostor.mean() * sg + genuine.mean() * si) / (sg + si))


def pair_scores(backend, vecs, pair_list) -> dict[tuple[str, str], float | None]:
    """Similarity of each pair; None when either side has no embedding."""
    scored = lambda a, b: not isinstance(vecs[a], str) and not isinstance(vecs[b], str)
    return {(a, b): backend.similarity(vecs[a], vecs[b]) if scored(a, b) else None for a, b in pair_list}


def separation_row(name, backend, vecs, sims, genuine_pairs, impostor_pairs) -> str:
    t = backend.info.threshold
    g = np.asarray([s for pq in genuine_pairs if (s := sims[pq]) is not None])
    i = np.asarray([s for pq in impostor_pairs if (s := sims[pq]) is not None])
    unscored = {n: r for n, r in vecs.items() if isinstance(r, str)}
    worst_g = min((pq for pq in genuine_pairs if sims[pq] is not None), key=sims.get)
    worst_i = max((pq for pq in impostor_pairs if sims[pq] is not None), key=sims.get)
    return (
        f"{name:6} {t:6.3f} {g.min():7.3f} {i.max():7.3f} {auc(g, i):6.3f} {d_prime(g, i):7.2f} "
        f"{int((g < t).sum()):>3}/{len(g):<3} {int((i >= t).sum()):>3}/{len(i):<3} "
        f"{suggest_threshold(list(g), list(i)):7.3f} {equal_z(g, i):6.3f}  "
        f"{g.mean():.3f}/{g.std():.3f}  {i.mean():.3f}/{i.std():.3f}  {unscored or '-'}\n"
        f"{'':6} worst genuine pair {worst_g}, worst impostor pair {worst_i}"
    )


def centroid_cell(backend, vecs, refs, probe) -> str:
    e = vecs[probe.name]
    if isinstance(e, str):
        label = "missed" if e == "not detected" else e.split(" ")[0]
        return f"{'(' + label + ')':>15}"
    s = backend.similarity(e, backend.centroid(np.stack([vecs[r.name] for r in refs])))
    return f"{s:8.3f} {'pass' if s >= backend.info.threshold else 'drift':>6}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="dlib,sface")
    args = ap.parse_args()
    from charkit.identity import get_backend

    refs, gen, hard, imp = reference_probes(), genuine_probes(), hard_probes(), impostor_probes()
    genuine_pairs, impostor_pairs = pairs(refs + gen + imp)
    print(
        f"images: {len(refs)} references + {len(gen)} held-out/degraded Obama + {len(imp)} other people "
        f"(+ {len(hard)} harder copies, not in the pairs); pairs: {len(genuine_pairs)} genuine, {len(impostor_pairs)} impostor"
    )
    backends = {name: get_backend(name) for name in args.backends.split(",")}
    vecs = {name: embed_all(b, refs + gen + hard + imp) for name, b in backends.items()}
    sims = {name: pair_scores(b, vecs[name], genuine_pairs + impostor_pairs) for name, b in backends.items()}

    print(
        f"\n{'':6} {'thresh':>6} {'gen min':>7} {'imp max':>7} {'AUC':>6} {'d-prime':>7} {'FRR':>7} {'FAR':>7} "
        f"{'gap mid':>7} {'eq-z':>6}  genuine mean/sd  impostor mean/sd  unscored"
    )
    for name, b in backends.items():
        print(separation_row(name, b, vecs[name], sims[name], genuine_pairs, impostor_pairs))

    # Each probe against the centroid of the two references, as charkit verify scores an image.
    print(f"\nagainst the centroid of {' + '.join(r.name for r in refs)} (pass: similarity >= threshold):")
    print(f"{'probe':24} {'kind':9}" + "".join(f"{n:>16}" for n in backends))
    for p, kind in [(p, "genuine") for p in gen] + [(p, "harder") for p in hard] + [(p, "impostor") for p in imp]:
        print(f"{p.name:24} {kind:9}" + "".join(f" {centroid_cell(b, vecs[n], refs, p)}" for n, b in backends.items()))

    if {"dlib", "sface"} <= set(backends):
        both = [pq for pq in genuine_pairs + impostor_pairs if None not in (sims["dlib"][pq], sims["sface"][pq])]
        decide = lambda n, pq: sims[n][pq] >= backends[n].info.threshold
        agree = sum(decide("dlib", pq) == decide("sface", pq) for pq in both)
        imp_both = [pq for pq in impostor_pairs if pq in both]
        r = np.corrcoef([sims["dlib"][pq] for pq in imp_both], [sims["sface"][pq] for pq in imp_both])[0, 1]
        print(
            f"\nRATIO agreement dlib/sface decisions = {agree}/{len(both)} pairs ({100 * agree / len(both):.1f} %); "
            f"{len(genuine_pairs) + len(impostor_pairs) - len(both)} pairs unscored by one of them"
        )
        print(f"correlation of dlib and sface similarities on impostor pairs: r = {r:.2f}")


if __name__ == "__main__":
    main()
