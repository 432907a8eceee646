"""The compiled extension `rust_cpuattn`, or None where it is not installed: the engine then
runs on its torch paths (slower). Every module that can use it imports it from here."""

try:
    import rust_cpuattn
except ImportError:
    rust_cpuattn = None

__all__ = ["rust_cpuattn"]
