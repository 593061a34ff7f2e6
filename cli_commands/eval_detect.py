"""``surgery eval MODEL... --data DIR`` when DIR is a YOLO-format folder: mAP of detectors."""

from __future__ import annotations

from cli_commands.base import load_models, out, print_json, progress, table


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def run_detection_eval(models, data, *, teacher, batch, device, json_out, arch, weights, trust_code, input,
                       head=None) -> None:
    from surgery.core.errors import SurgeryError
    from surgery.detect.evaluate import evaluate_detectors

    if teacher:
        raise SurgeryError(f"{data} is a YOLO-format folder: detectors are measured by mAP against its labels; "
                           "--teacher compares classifiers (drop it)")
    nets = load_models(list(models), arch, weights, trust_code, input)
    with progress() as bar:
        task = bar.add_task("evaluating", total=None)
        rep = evaluate_detectors(nets, data, batch=min(batch, 64), device=device, head=head,
                                 progress=lambda d, t, label: bar.update(task, completed=d, total=t, description=label))
    if json_out:
        print_json(rep)
        return
    rows = [[m.model + (f" (head {m.head})" if m.head is not None else ""), "x".join(map(str, m.input_shape)),
             str(m.classes), _pct(m.map50), _pct(m.map),
             f"{m.detections:,}"] for m in rep.models]
    skipped = f", {rep.skipped_images} unreadable skipped" if rep.skipped_images else ""
    con = out()
    con.print(table(f"eval on {rep.data} ({rep.images} images, {rep.boxes} boxes{skipped})",
                    ["model", "input", "classes", "mAP@0.5 %", "mAP@0.5:0.95 %", "detections"], rows,
                    right=["classes", "mAP@0.5 %", "mAP@0.5:0.95 %", "detections"]))
    con.print(f"COCO mAP (pycocotools) after NMS at IoU {rep.nms_iou:g}, detections scoring above "
              f"{rep.conf_thresh:g} (objectness x class), at most 100 per image; letterboxed as in training",
              style="dim", markup=False)
