"""``maskjob train``, ``maskjob evaluate`` and ``maskjob weights install``."""

from __future__ import annotations

import argparse
import json
import sys

from maskjob.cli import settings_from_args
from maskjob.errors import MaskjobError
from maskjob.vocab import ALL_SPLITS, ARCHS, TRANSFER_ARCHS

__all__ = ["add_commands"]


def _train(args: argparse.Namespace) -> int:
    from maskjob.ml.threads import apply_thread_budget
    from maskjob.ml.train import train_model

    settings = apply_thread_budget(settings_from_args(args), concurrent=1)
    result = train_model(
        args.arch,
        args.data or settings.dataset_root,
        args.out or settings.models_dir,
        settings,
        max_epochs=args.epochs,
        weights_path=args.weights,
        image_size=args.image_size,
    )
    meta = result.meta
    test = meta["metrics"]
    print(
        f"{meta['arch']}: best epoch {meta['best_epoch']} of {len(meta['history'])}, "
        f"val macro-F1 {meta['val_macro_f1']:.4f}, test macro-F1 {test['macro_f1']:.4f}, "
        f"test accuracy {test['accuracy']:.4f}, {meta['train_seconds']:.0f} s"
    )
    print(f"checkpoint {result.checkpoint_path}")
    if meta["diverged"]:
        print("maskjob: warning: training diverged (NaN/inf loss); this checkpoint will not be promoted",
              file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from maskjob.ml.evaluate import evaluate_checkpoint, format_report

    settings = settings_from_args(args)
    report = evaluate_checkpoint(args.model, args.data or settings.dataset_root, args.split, settings)
    if not args.predictions:
        report.pop("predictions")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        for row in report.get("predictions", []):
            probs = " ".join(f"{p:.3f}" for p in row["probs"])
            print(f"{row['true']:>13} -> {row['pred']:<13} [{probs}] {row['path']}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from maskjob.ml.models import OFFLINE_ASSETS, install_weights

    settings = settings_from_args(args)
    source = args.source
    if source is None:
        if args.arch not in OFFLINE_ASSETS:
            raise MaskjobError(
                f"no offline source for {args.arch} weights is bundled (only for {sorted(OFFLINE_ASSETS)}). "
                f"Copy torchvision's ImageNet file for {args.arch} onto this machine and run "
                f"`maskjob weights install {args.arch} --from FILE`, or pass `--weights PATH` to `maskjob train`."
            )
        from maskjob.assets import asset_path

        source = asset_path(settings, OFFLINE_ASSETS[args.arch])
    dest = install_weights(args.arch, settings.torch_home, source)
    print(f"{args.arch} weights verified and installed at {dest}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``weights`` (with ``install``)."""
    train = subparsers.add_parser("train", help="train one classifier and save its best checkpoint")
    train.add_argument("--arch", required=True, choices=ARCHS, help="model architecture")
    train.add_argument("--data", help="dataset root with train/ and test/ (default: settings.dataset_root)")
    train.add_argument("--out", help="output folder for <arch>.pt and <arch>.history.json (default: settings.models_dir)")
    train.add_argument("--epochs", type=int, help="epoch budget (default: 24 for cnn, 8 for transfer models, capped by settings.max_epochs)")
    train.add_argument("--image-size", type=int, help="input side in pixels (default: the architecture's, 64 or 96)")
    train.add_argument("--weights", help="pretrained ImageNet weights file for a transfer model (overrides the cache)")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="metrics of a checkpoint on a dataset split",
        description="Score a labelled split with a checkpoint: accuracy, macro-F1, per-class "
                    "precision/recall/F1 and the confusion matrix. Only the split scored must exist, "
                    "so a folder of your own laid out as ROOT/test/<class>/<images> is enough.",
    )
    evaluate.add_argument("--model", required=True, help="checkpoint file (.pt)")
    evaluate.add_argument("--data", metavar="ROOT",
                          help="dataset root holding <split>/{with_mask,without_mask,partial_mask}/ "
                               "(default: settings.dataset_root)")
    evaluate.add_argument("--split", default="test", choices=ALL_SPLITS, help="split to score (default: test)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--predictions", action="store_true", help="include the per-image predictions")
    evaluate.set_defaults(func=_evaluate)

    weights = subparsers.add_parser("weights", help="pretrained ImageNet weights for the transfer models")
    weights_sub = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    install = weights_sub.add_parser(
        "install", help="verify a weights file (sha256) and copy it into the torch hub cache (settings.torch_home)"
    )
    install.add_argument("arch", choices=TRANSFER_ARCHS, help="transfer architecture")
    install.add_argument(
        "--from", dest="source",
        help="weights file to install (default for mobilenet_v2: the offline asset from `maskjob assets fetch`)",
    )
    install.set_defaults(func=_install)
