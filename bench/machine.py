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
