"""Machine facts printed beside every benchmark table (the CPU model; versions are per script)."""
import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_line(when):
    """``"load average at WHEN: 1 / 5 / 15 min = a, b, c (N CPUs)"`` from ``os.getloadavg``, to show how shared the box was."""
    import os

    try:
        a, b, c = os.getloadavg()
    except OSError:
        return f"load average at {when}: unknown"
    return f"load average at {when}: 1 / 5 / 15 min = {a:.2f}, {b:.2f}, {c:.2f} ({os.cpu_count()} CPUs)"
