"""Real data that ships inside installed wheels, written to image folders.

Nothing downloads at run time: the tests, the README examples, the demo and the benchmarks
share these writers (``surgery data NAME OUT_DIR``).
"""

from surgery.datasets.digits import DigitsReport, write_digits  # noqa: F401
