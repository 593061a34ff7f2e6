"""OnionNet cascades (onionnet-bmvc2016 §3–5): split a trained chain network into a two-stage
cascade (:mod:`.split`), train it jointly (:mod:`.train`), calibrate S1's pass thresholds
(:mod:`.calibrate`) and export the stages as two ONNX graphs (:mod:`.export`). The
architecture and the runtime that skips S2 for rejected samples are :mod:`zoo.onion` and
:mod:`zoo.onion_runtime`; the cost at a pass fraction and the t(p) curve are analyzers
(:mod:`analyzers.onion_operating`, :mod:`analyzers.onion_curve`)."""
