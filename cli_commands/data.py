"""``surgery data NAME OUT_DIR``: write bundled real data (shipped inside installed wheels) as
image folders, so the README examples, tests and demos run without downloads."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import ForceOpt, JsonOpt, app, examples, out, print_json, wrote

data_app = typer.Typer(help="Write bundled real data as image folders.", no_args_is_help=True,
                       context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(data_app, name="data", help="Write bundled real data as image folders (nothing is downloaded).")


@data_app.command("digits", epilog=examples("surgery data digits digits"))
def digits_cmd(
    out_dir: str = typer.Argument(..., metavar="OUT_DIR", help="Folder to write (train/<digit>/*.png, val/<digit>/*.png)."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Keep only the first N images of each "
                                                                       "class in each split (a quick small folder)."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """scikit-learn's 1,797 handwritten 8x8 digits as PNGs in class sub-folders (deterministic 80/20 split)."""
    from surgery.datasets import write_digits

    rep = write_digits(out_dir, per_class=per_class, force=force)
    if json_out:
        print_json(rep)
        return
    out().print(f"digits: {rep.train_images} training and {rep.val_images} held-out "
                f"{'x'.join(map(str, rep.image_shape))} images in {len(rep.classes)} class folders")
    wrote(rep.output)


@data_app.command("stereo-patches", epilog=examples(
    "surgery data stereo-patches pairs",
    "surgery data stereo-patches pairs --train-pairs 20000 --val-pairs 4000 --seed 1 --force",
))
def stereo_patches_cmd(
    out_dir: str = typer.Argument(..., metavar="OUT_DIR", help="Folder to write ({train,val}/{neg,pos}/*.png, pairs.json)."),
    train_pairs: int = typer.Option(4000, "--train-pairs", help="Training pairs (even; half corresponding)."),
    val_pairs: int = typer.Option(1000, "--val-pairs", help="Held-out pairs, cut from the test band only."),
    test_rows: int = typer.Option(160, "--test-rows", help="Bottom image rows held out for the val pairs."),
    seed: int = typer.Option(0, "--seed", help="Seed of where pairs are cut."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """64x64 greyscale patch pairs from the Middlebury motorcycle stereo pair (skimage): corresponding
    points by ground-truth disparity vs. wrong-disparity and random negatives; a band of rows held out."""
    from surgery.datasets.stereo_patches import write_stereo_patches

    rep = write_stereo_patches(out_dir, n_train=train_pairs, n_val=val_pairs, seed=seed, test_rows=test_rows,
                               force=force)
    if json_out:
        print_json(rep)
        return
    out().print(f"stereo patches: {rep.train_pairs} training pairs ({rep.train_positives} corresponding) from "
                f"image rows 0..{rep.test_rows[0] - 1}, {rep.val_pairs} held-out pairs ({rep.val_positives} "
                f"corresponding) from rows {rep.test_rows[0]}..{rep.test_rows[1] - 1}; "
                f"{'x'.join(map(str, rep.image_shape))} two-channel PNGs (left, right)")
    wrote(rep.output)


@data_app.command("patch-pairs", epilog=examples(
    "surgery data patch-pairs pairs --pairs 20000",
    "surgery data patch-pairs pairs --source warps --pairs 40000 --val-fraction 0.25 --seed 1 --force",
))
def patch_pairs_cmd(
    out_dir: str = typer.Argument(..., metavar="OUT_DIR", help="Folder to write ({train,val}/{neg,pos}/*.png, pairs.json)."),
    source: str = typer.Option("both", "--source", help="stereo (Middlebury pair), warps (bundled photographs under "
                                                        "random homographies) or both (half each)."),
    pairs: int = typer.Option(20000, "--pairs", help="Pairs in all (train + val; half corresponding)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction held out (from held-out photographs "
                                                                   "/ the stereo pair's held-out rows)."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything drawn (same seed, same bytes)."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """64x64 greyscale patch pairs, HPatches-style: windows of the bundled photographs and of their views
    under known homographies + blur + noise + illumination change (positives at the warped location, hard
    negatives 8..64 px away, random ones); train/val split by photograph."""
    from surgery.datasets.patch_pairs import write_patch_pairs

    rep = write_patch_pairs(out_dir, pairs, source=source, val_fraction=val_fraction, seed=seed, force=force)
    if json_out:
        print_json(rep)
        return
    out().print(f"patch pairs ({rep.source}): {rep.train_pairs} training pairs ({rep.train_positives} corresponding) "
                f"from {len(rep.train_photos)} photographs, {rep.val_pairs} held-out pairs ({rep.val_positives} "
                f"corresponding) from {len(rep.val_photos)} others; {'x'.join(map(str, rep.image_shape))} two-channel "
                f"PNGs, {rep.bytes_on_disk / 1e6:.1f} MB")
    wrote(rep.output)


# the options the generators of YOLO-format folders (surgery/datasets/paste.py) share
_YOLO_OUT = typer.Argument(..., metavar="OUT_DIR", help="Folder to write ({train,val}/images/*.jpg, "
                                                        "{train,val}/labels/*.txt, classes.txt, synth.json).")
_SIZE = typer.Option(256, "--size", help="Image side in pixels (square images).")
_SEED = typer.Option(0, "--seed", help="Seed of everything drawn (same seed, same bytes).")


@data_app.command("synth-text", epilog=examples(
    "surgery data synth-text text",
    "surgery data synth-text text --train 2000 --val 400 --size 416 --seed 1 --force",
))
def synth_text_cmd(
    out_dir: str = _YOLO_OUT,
    train: int = typer.Option(200, "--train", help="Training images."),
    val: int = typer.Option(50, "--val", help="Held-out images (cut from other photographs than the training ones)."),
    size: int = _SIZE,
    max_words: int = typer.Option(4, "--max-words", help="Words per image: 1..N."),
    max_angle: float = typer.Option(5.0, "--max-angle", help="Rotation of a word: within ±N degrees."),
    seed: int = _SEED,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """SynthText-style text detection data: words in matplotlib's DejaVu fonts on the bundled photographs,
    YOLO-format boxes (class 0 = text), train/val split by photograph."""
    from surgery.datasets.synth_text import write_synth_text

    _pasted(write_synth_text, "synth-text", "words", json_out, out_dir, n_train=train, n_val=val, size=size,
            max_words=max_words, max_angle=max_angle, seed=seed, force=force)


@data_app.command("digit-boxes", epilog=examples(
    "surgery data digit-boxes digits-det",
    "surgery data digit-boxes digits-det --train 2000 --val 400 --size 160 --seed 1 --force",
))
def digit_boxes_cmd(
    out_dir: str = _YOLO_OUT,
    train: int = typer.Option(1000, "--train", help="Training images."),
    val: int = typer.Option(200, "--val", help="Held-out images (other photographs, held-out digit samples)."),
    size: int = _SIZE,
    max_digits: int = typer.Option(10, "--max-digits", help="Digits per image: 1..N."),
    max_angle: float = typer.Option(10.0, "--max-angle", help="Rotation of a digit: within ±N degrees."),
    seed: int = _SEED,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """Digit detection data: scikit-learn's 8x8 digits upscaled onto the bundled photographs (random size,
    contrasting colour, slight rotation), 10 classes, YOLO-format boxes, train/val split by photograph."""
    from surgery.datasets.digit_boxes import write_digit_boxes

    _pasted(write_digit_boxes, "digit-boxes", "digits", json_out, out_dir, n_train=train, n_val=val, size=size,
            max_digits=max_digits, max_angle=max_angle, seed=seed, force=force)


def _pasted(write, name: str, noun: str, json_out: bool, out_dir: str, **kw) -> None:
    """Run a pasted-objects writer (surgery.datasets.paste) under a progress bar and render its report."""
    from cli_commands.base import progress

    with progress() as bar:
        task = bar.add_task("rendering", total=kw["n_train"] + kw["n_val"])
        rep = write(out_dir, progress=lambda d, t: bar.update(task, completed=d), **kw)
    if json_out:
        print_json(rep)
        return
    out().print(f"{name}: {rep.train_images} training images ({rep.train_boxes} {noun}) from "
                f"{len(rep.train_photos)} photographs, {rep.val_images} held-out images ({rep.val_boxes} {noun}) from "
                f"{len(rep.val_photos)} others; {'x'.join(map(str, rep.image_shape))} JPEGs, YOLO labels"
                + (f", {len(rep.classes)} classes" if len(rep.classes) > 1 else ""))
    wrote(rep.output)
