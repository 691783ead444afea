"""raysys: distributed training and serving of anomaly detectors for industrial sensor data."""

__version__ = "0.2.0"
