"""OnionNet cascades (onionnet-bmvc2016 §3–5): split a trained chain network into a two-stage
cascade (:mod:`.split`), run it skipping S2 for rejected samples (:mod:`.runtime`), export
the stages as two ONNX graphs (:mod:`.export`), and model/measure its time as a function of
the pass fraction (:mod:`.curve`). The architecture itself is :mod:`zoo.onion`."""
