"""Units shared by every layer: one GiB is 2**30 bytes."""

GIB = 2**30
