"""Per-op tests: ``test_<op>.py`` holds the reference, CPU-kernel, GPU-parity and gradient-check tests of one op."""
