"""edgeq: from a QLoRA fine-tune to an artifact that fits an edge device."""

import logging

__version__ = "0.1.0"

# bitsandbytes looks for an optional CPU kernel that it would fetch from a model hub at run time
# and warns "pip install kernels" when it is absent. edgeq never downloads at run time, so the
# built-in kernel is the intended path and the warning only misleads.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
