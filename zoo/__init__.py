"""Model zoo: one family per module, every entry registered in :mod:`zoo.registry`.

``zoo:NAME[:k=v,...]`` references resolve here. Each family module is imported below so
its ``@register`` decorators run.
"""

from importlib import import_module

from zoo.registry import ZooEntry, entries, get, names, register  # noqa: F401

_FAMILIES = ["resnet", "shufflenet", "diracnet", "wrn", "patchnets", "darknet_zoo"]

for _fam in _FAMILIES:
    try:
        import_module(f"zoo.{_fam}")
    except ModuleNotFoundError as e:  # a family still being written; keep the rest usable
        if e.name != f"zoo.{_fam}":
            raise
