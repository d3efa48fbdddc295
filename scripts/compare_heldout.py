"""Calibrate each model's threshold on the first half of held-out sets, score on the second half.

    for k in ice water hydrates; do hydrafm simulate $k -n 96 --split held-out --distance 2.5:3.5 \
        --seed 7 --shard-size 16 --out $HYDRAFM_EVAL/$k-heldout; done
    python scripts/compare_heldout.py MODEL [MODEL ...]      # → compare.json
    python scripts/compare_heldout.py --flips --transposed MODEL              # 8 views
    python scripts/compare_heldout.py --flips --average-with CKPT2 MODEL      # two networks' maps averaged
    hydrafm simulate hydrates -n 96 --split held-out --distance 2.5:3.5 --seed 8 --shard-size 16 \
        --out $HYDRAFM_EVAL/hydrates2-heldout
    python scripts/compare_heldout.py --calibrate hydrates --classes O,Na,K,H --score hydrates \
        --score-whole hydrates2 MODEL ...                  # ion models

The threshold with the best mean O/H F1 on the first halves of the ice and water sets (or the
sets and classes given) is chosen per model; every set's second half is then scored as it is and after experiment-like
degradations (``hydrafm evaluate --degrade``), per family and per distance regime.
"""
import argparse, json, os
import numpy as np, torch
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
from hydrafm.simulate.dataset import AFMDataset
from hydrafm.predict.evaluate import CALIBRATION_THRESHOLDS, calibrate_threshold, evaluate_groups
from hydrafm.progress import drive
from hydrafm.predict.predictor import resolve_model

root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")  # the folders made by the commands above
ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--calibrate", default="ice,water", help="held-out sets whose first halves choose the threshold")
ap.add_argument("--score", default="ice,water,hydrates", help="held-out sets whose second halves are scored")
ap.add_argument("--score-whole", default="", help="held-out sets scored whole (never used for calibration)")
ap.add_argument("--top", type=float, default=3.0, help="score true atoms within this many Å of the highest atom")
ap.add_argument("--visible", type=float, default=3.0,
                help="predictions on real atoms below --top but within this many Å of the top are not scored "
                     "(0: false positives, as before 2026-11-27)")
ap.add_argument("--flips", action="store_true", help="average each prediction over the four mirror images")
ap.add_argument("--no-ions", action="store_true", help="leave the Na/K maps out (models that report no ions)")
ap.add_argument("--classes", default="O,H", help="classes whose mean F1 chooses the threshold")
ap.add_argument("--transposed", action="store_true",
                help="also run every view transposed (with --flips: the 8 symmetries of the square)")
ap.add_argument("--average-with", metavar="CKPT",
                help="average each model's maps with this checkpoint's (a two-network ensemble)")
ap.add_argument("--denoise", metavar="FILE",
                help="take the noise off every stack with this denoiser first (hydrafm.models.denoise)")
args = ap.parse_args()


class Views(torch.nn.Module):
    """Test-time variants of a network for this comparison only: its maps averaged with those of
    its transposed input (``--transposed``) and of other networks (``--average-with``)."""

    def __init__(self, nets, transposed: bool):
        super().__init__()
        self.nets, self.transposed = torch.nn.ModuleList(nets), transposed

    def probabilities(self, x):
        out = []
        for net in self.nets:
            out.append(net.probabilities(x))
            if self.transposed:
                out.append(net.probabilities(x.transpose(-1, -2).contiguous()).transpose(-1, -2))
        return torch.stack(out).mean(0)


models = args.models
flips = args.flips or None  # None: as the model records
vis = args.visible
whole = [k for k in args.score_whole.split(",") if k]
if set(whole) & set(args.calibrate.split(",")):
    ap.error("a set used for calibration cannot be scored whole")
names = args.calibrate.split(",") + args.score.split(",") + whole
sets = {k: AFMDataset(f"{root}/{k}-heldout") for k in dict.fromkeys(names)}
out = {}
for m in models:
    net = resolve_model(m, "cpu")
    if args.transposed or args.average_with:
        others = [resolve_model(args.average_with, "cpu")[0]] if args.average_with else []
        net = (Views([net[0], *others], args.transposed), net[1])
    if args.no_ions:
        net[1].provenance["ions"] = False
    if args.denoise:
        net[1].provenance["denoise"] = args.denoise
    t, tot = drive(calibrate_threshold([sets[k] for k in args.calibrate.split(",")], net,
                                       args.classes.split(","), CALIBRATION_THRESHOLDS, top=args.top, flips=flips,
                                       visible=vis), show=False)
    out[m] = {"threshold": t, "flips": bool(args.flips), "transposed": args.transposed,
              "average_with": args.average_with, "denoise": args.denoise, "ions": not args.no_ions,
              "top": args.top, "visible": vis,
              "calibrated_on": args.calibrate, "calibration_classes": args.classes,
              "calibration": {str(k): v.summary() for k, v in tot.items()}}
    for k in args.score.split(",") + whole:
        ds = sets[k]
        rest = np.arange(len(ds)) if k in whole else np.arange(len(ds) // 2, len(ds))
        g = drive(evaluate_groups(ds, net, rest, t, top=args.top, flips=flips, visible=vis), show=False)
        out[m][k] = g.summary()
        gd = drive(evaluate_groups(ds, net, rest, t, top=args.top, degrade=True, flips=flips, visible=vis), show=False)
        out[m][k + "_degraded"] = gd.summary()
    print(m, "threshold", t, flush=True)
json.dump(out, open(os.environ.get("HYDRAFM_COMPARE_OUT", "compare.json"), "w"), indent=1)
