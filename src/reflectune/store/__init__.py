"""The run's memory: the call and result store, the run lock, and the run folder around them."""

from reflectune.store.calls import CallRecord, Store
from reflectune.store.lock import RunLock
from reflectune.store.rundir import RunFolder, default_run_dir, read_manifest

__all__ = ["CallRecord", "RunFolder", "RunLock", "Store", "default_run_dir", "read_manifest"]
