"""Which pairs set S1's threshold at a high TPR: S1 scores of a trained cascade on a
``surgery data patch-pairs`` folder, by source (stereo / warps) and negative kind.

For each split: the share of each source among the lowest-scoring ``--tail`` of the positives
(the pairs that decide the threshold at TPR 1 - tail), the median S1 score of positives and
negatives per source, and the fraction of each negative kind that passes at that split's own
(1 - tail)-quantile threshold. A diagnostic for docs/BENCHMARKS.md "Table 2 on patch-pairs".

    python benchmarks/onion_s1_tail.py /tmp/t2b/P.pt /tmp/t2b/pairs --tail 0.01
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cascade")
    ap.add_argument("pairs")
    ap.add_argument("--tail", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from surgery.core import io as sio
    from zoo.onion_runtime import run
    from surgery.train import data as tdata

    torch.set_num_threads(args.threads)
    root = Path(args.pairs)
    net = sio.load(args.cascade)
    manifest = json.loads((root / "pairs.json").read_text())
    norm = tdata.Normalization.from_metadata(net.metadata, 2)
    for split, folder in zip(("train", "val"), tdata.folders(root, None, labels=True)):
        by_file = {r["file"]: r for r in manifest[split]}
        meta = [by_file[str((folder.root / f).relative_to(root))] for f in folder.files]
        loader = torch.utils.data.DataLoader(tdata.FolderDataset(folder, (2, 64, 64), train=False), batch_size=512)
        with torch.inference_mode():
            scores = torch.cat([run(net.module.eval(), tdata.prepare(b, norm, (64, 64), train=False,
                                                                     device=torch.device("cpu"))).scores[:, 1]
                                for b in loader]).numpy()
        pos = np.array([r["label"] == 1 for r in meta])
        src = np.array([r["source"] for r in meta])
        kind = np.array([r["kind"] for r in meta])
        thr = float(np.quantile(scores[pos], args.tail))
        low = pos & (scores <= thr)
        tail = dict(collections.Counter(src[low].tolist()))
        print(f"{split}: {int(pos.sum())} positives; threshold at TPR {1 - args.tail:g}: {thr:.4f}; lowest "
              f"{int(low.sum())} positives by source: {tail}")
        from PIL import Image

        def mad(idx):  # mean |left - right| grey levels of these pairs' windows
            return float(np.mean([np.abs(np.asarray(Image.open(folder.root / folder.files[i]), np.float64)
                                         @ np.array([1.0, -1.0])).mean() for i in idx])) if len(idx) else float("nan")

        for s in sorted(set(src.tolist())):
            ps = pos & (src == s)
            print(f"  {s}: mean |left - right| of the tail positives {mad(np.flatnonzero(low & ps)):.1f} grey "
                  f"levels, of the other positives {mad(np.flatnonzero(ps & ~low)):.1f}")
        if "stereo" in set(src.tolist()):  # the ground truth under the stereo windows
            from surgery.datasets.stereo_patches import scene

            disp = scene().disparity

            def gt(idx):  # unknown-disparity fraction, disparity range (px) in the left windows
                ws = [disp[meta[i]["left"][0] - 32:meta[i]["left"][0] + 32,
                           meta[i]["left"][1] - 32:meta[i]["left"][1] + 32] for i in idx]
                return (np.mean([(~np.isfinite(w)).mean() for w in ws]),
                        np.median([np.ptp(w[np.isfinite(w)]) for w in ws if np.isfinite(w).any()]))

            ps = pos & (src == "stereo")
            (ua, ra), (ub, rb) = gt(np.flatnonzero(low & ps)), gt(np.flatnonzero(ps & ~low))
            print(f"  stereo positives' left windows: unknown disparity {ua:.3f} (tail) vs {ub:.3f} (rest); "
                  f"median disparity range {ra:.1f} px vs {rb:.1f} px")
        for s in sorted(set(src.tolist())):
            neg = ~pos & (src == s)
            kinds = {k: round(float((scores[neg & (kind == k)] >= thr).mean()), 3)
                     for k in sorted(set(kind[neg].tolist()))}
            print(f"  {s}: median S1 score positives {np.median(scores[pos & (src == s)]):.3f}, negatives "
                  f"{np.median(scores[neg]):.3f}; negatives passing: {(scores[neg] >= thr).mean():.3f} {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
