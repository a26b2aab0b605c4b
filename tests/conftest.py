"""Test configuration shared by every test module.

XLA must see 8 host devices before JAX initialises so that the sharded
backend can be tested on CPU; this has no effect on single-device code.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Property tests draw the same examples on every run by default, so that a
# run's outcome depends on the code only (CI cannot turn red on a new random
# draw). `HYPOTHESIS_PROFILE=explore python -m pytest` draws new examples
# each run to search further; a failure prints the example to pin with
# @example.
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
