"""Offline data set builders that write the real on-disk formats (SHD h5, N-MNIST .bin)."""
