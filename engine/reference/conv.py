"""Float64 references of Conv2d and Linear (forward and both backward passes)."""
