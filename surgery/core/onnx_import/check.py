"""Weights into the built module, and the imported module against onnxruntime."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from surgery.core.errors import SurgeryError

IMPORT_RTOL = 1e-4


def load_weights(module: nn.Module, weights: dict, path) -> None:
    state = {}
    own = module.state_dict()
    for k, v in weights.items():
        if k not in own:
            raise SurgeryError(f"{path}: internal error: weight {k} has no place in the imported module")
        t = torch.from_numpy(np.array(v, copy=True))
        if tuple(t.shape) != tuple(own[k].shape):
            if t.numel() == own[k].numel():
                t = t.reshape(own[k].shape)
            else:
                raise SurgeryError(f"{path}: weight {k} has shape {list(t.shape)} but the layer needs "
                                   f"{list(own[k].shape)}; the ONNX graph is inconsistent")
        state[k] = t.to(own[k].dtype)
    missing = [k for k in own if k not in state]
    if missing:
        raise SurgeryError(f"{path}: internal error: no ONNX weight for {', '.join(missing[:3])}")
    module.load_state_dict(state, strict=True)


def against_onnxruntime(prep, module: nn.Module):
    """Probe inputs through onnxruntime (the original file, Constant nodes and all) and the
    imported module; a difference beyond :data:`IMPORT_RTOL` (with the absolute floor of
    :meth:`surgery.core.verify.VerifyReport.ok`) is an error."""
    from surgery.core.onnx_io import OrtModule, error_line, quiet_exporters
    from surgery.core.ort_session import ort_session
    from surgery.core.verify import compare

    try:
        with quiet_exporters():
            sess = ort_session(prep.model.SerializeToString())
    except SurgeryError:
        raise
    except Exception as e:
        raise SurgeryError(f"{prep.path}: onnxruntime cannot load the model ({error_line(e)}); it is not a valid "
                           f"ONNX graph") from None
    batch = prep.static_batch or 2
    try:
        with quiet_exporters():
            rep = compare(module, OrtModule(sess), prep.input_shape, probes=2, batch=batch)
    except SurgeryError as e:
        raise SurgeryError(f"{prep.path}: checking the import against onnxruntime: {e}") from None
    except Exception as e:
        raise SurgeryError(f"{prep.path}: onnxruntime cannot run the model at input "
                           f"{'x'.join(map(str, prep.input_shape))} ({error_line(e)}); check --input") from None
    if not rep.ok(IMPORT_RTOL):
        raise SurgeryError(f"{prep.path}: the imported model differs from onnxruntime: max rel {rep.max_rel:.3g} > "
                           f"{IMPORT_RTOL:g} (max abs {rep.max_abs:.3g}); please report this graph")
    return rep
