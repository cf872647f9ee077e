"""heart: ECG heartbeat classification from raw PhysioNet records to an exported model."""

__version__ = "0.1.0"
