"""reflectune: recycle instruction-tuning data with Reflection-Tuning and Selective Reflection-Tuning."""

__version__ = "0.1.0"
