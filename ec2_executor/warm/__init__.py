"""Warm reuse (`keep_warm_minutes`): an electron's lease on an idle instance of its reuse key.

`lease.py` is the one seam the executor uses; `pool.py` owns every instance kept in this
process; `reuse.py` says which electrons may share one.
"""

from ec2_executor.warm.lease import Lease, acquire, cancel

__all__ = ["Lease", "acquire", "cancel"]
