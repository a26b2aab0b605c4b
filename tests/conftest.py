"""Test configuration shared by every test module.

XLA must see 8 host devices before JAX initialises so that the sharded
backend can be tested on CPU; this has no effect on single-device code.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
