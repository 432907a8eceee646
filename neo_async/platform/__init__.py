"""Facts about the machine: which torch device plays the device, how much memory there is,
and host memory allocation (huge pages, pinning)."""
