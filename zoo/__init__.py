"""Model zoo: one family per module, every entry registered in :mod:`zoo.registry`.

``zoo:NAME[:k=v,...]`` references resolve here. Each family module is imported below so
its ``@register`` decorators run.
"""

from importlib import import_module

from zoo.registry import ZooEntry, entries, get, names, register  # noqa: F401

_FAMILIES = ["resnet", "shufflenet", "mobilenet", "diracnet", "wrn", "patchnets", "onion", "darknet_zoo", "digits"]

for _fam in _FAMILIES:
    import_module(f"zoo.{_fam}")
