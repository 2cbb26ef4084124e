# Placeholder until the module layer lands.
from . import functional  # noqa: F401
