#!/usr/bin/env bash
# The main job on zoo models: a YOLOv3 base detector and a one-class "text" detector
# partially retrained from layer 75 become one network that runs the backbone once.
# Usage: scripts/demo.sh OUTDIR   (make demo runs it with demo-out/)
set -euo pipefail
out=${1:-demo-out}
S=${SURGERY:-.venv/bin/surgery}
mkdir -p "$out"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "What the zoo builds: YOLOv3-416 (Darknet layer indices 0..106)"
$S info zoo:yolov3

step "Base detector (80 COCO classes) as a checkpoint"
$S zoo build yolov3 -o "$out/base.pt" --seed 0 --force

step "Text detector: layers 0..74 kept, head re-initialised for 1 class (the paper's starting point)"
$S retarget "$out/base.pt" --at 74 --classes 1 --seed 1 -o "$out/text.pt" --force

step "Where do the two differ? (box plots per layer, suggested split)"
$S diff "$out/base.pt" "$out/text.pt" --plot "$out/diff.png" --force

step "How much would sharing save at other cut points? (paper Table I)"
$S share --sweep 40,48,64,73,74 "$out/base.pt" "$out/text.pt"

step "Share the backbone at layer 74: one network, two heads, verified against both sources"
$S share --at 74 "$out/base.pt" "$out/text.pt" -o "$out/shared.pt" --darknet "$out/shared.cfg" --force

step "The combined network: base layers 0..106, a route to 74, the text head 108..139"
$S layers "$out/shared.pt" --input 3x416x416 | tail -n 45

step "Costs: base alone vs combined"
$S flops "$out/base.pt" --convention darknet
$S flops "$out/shared.pt" --convention darknet

step "Measured CPU latency: base and text run one after the other (what two models cost) vs the shared net"
$S profile "$out/base.pt+$out/text.pt" "$out/shared.pt" --batch 1 --runtime torch --threads 1 --plot "$out/profile.png" --force

printf '\nDemo outputs in %s/: base.pt text.pt shared.pt shared.cfg shared.weights diff.png profile.png\n' "$out"
