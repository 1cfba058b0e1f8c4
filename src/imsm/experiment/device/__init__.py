"""A whole study on one device machine that has no network and takes little per call: pack what it
lacks here (`imsm pack-for-device`), unpack and run it there (`on_device.py`, standard library only)."""
